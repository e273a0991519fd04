//! The cross-device move: plain Rust on file descriptors.
//!
//! [`rename`] is called after the kernel answered `EXDEV`. It opens the two
//! parent directories once and works relative to them from then on
//! ([`path`]), makes the checks a same-filesystem rename would make
//! ([`check`]), then moves the object by type. Every syscall is a raw one
//! through rustix, so nothing here can land in xrename's own hooks.
//!
//! By type: regular files ([`file`]), directory trees ([`dir`]), symlinks
//! and special files ([`node`]). Each builds a hidden copy next to the
//! destination, [`install`] puts it in place atomically, the source is
//! taken from its name and removed ([`source`]), and only then is the old
//! destination dropped.
//!
//! Each policy has one home: hidden names ([`names`]), metadata for every
//! object type ([`meta`]), durability ([`durable`]), and what the program
//! is told ([`program_errno`]). The modules form layers that read from the
//! bottom up (README, "Code map"; `tests/layers.rs` enforces it).
#![deny(unsafe_code)]
#![warn(missing_docs)]

// Layers, from the bottom; a module imports only from layers below it
// (README, "Code map").
// 1. leaves
mod error;
mod sys;
pub mod vars;
pub mod virtualisers;
// 2. what objects are, and policies
pub mod copy;
pub mod durable;
pub mod logline;
pub mod meta;
pub mod names;
pub mod path;
pub mod pool;
pub mod report;
pub mod seen;
pub mod special;
pub mod stat;
pub mod writers;
// 3. trees
pub mod tree;
pub mod walk;
// 4. the kernel's checks, placing and taking
pub mod check;
pub mod install;
pub mod source;
// 5. object movers
pub mod dir;
pub mod file;
pub mod links;
pub mod node;

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use rustix::fs::{FileType, RenameFlags, Statx};
use rustix::io::Errno;

use durable::Durability;
pub use error::{Error, Result};
use error::{Next, Origin};
use path::Entry;
pub use report::{Op, Progress, Report};

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
#[derive(Debug, Clone)]
pub struct Options {
    /// fsync data and directories (off only for throwaway data).
    pub fsync: bool,
    /// Move directories (off: EXDEV, the program's business).
    pub dirs: bool,
    /// Bytes and objects so far, for a progress display elsewhere.
    pub progress: Option<Arc<dyn report::Progress>>,
    /// Copies of multi-link files moved earlier, to link other names to.
    pub links: Option<Arc<links::Links>>,
    /// The files the program holds leases on, when the engine moves on
    /// another process's behalf (the supervisor); `None`: this process's,
    /// read at each move.
    pub leases: Option<copy::OwnLeases>,
    /// Told where the move stands, for a caller that must answer the
    /// program even if the process moving dies (the supervisor's helper).
    pub stages: Option<Stages>,
    /// Most threads a tree move may use, the caller's included (`None`:
    /// one per CPU the caller may run on, at most 8; 1: the caller alone).
    pub threads: Option<usize>,
    /// Whether the engine runs in the program's own process: then a
    /// calling thread whose working directory is in a directory tree
    /// moved follows it to its new place, as the kernel's rename keeps it
    /// on the moved directory (off for the supervisor, which moves on
    /// another process's behalf).
    pub follow_cwd: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fsync: true,
            dirs: true,
            progress: None,
            links: None,
            leases: None,
            stages: None,
            threads: None,
            follow_cwd: true,
        }
    }
}

/// Where a move stands, as far as anyone outside it can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The copy is at the destination's name (the old destination kept at a
    /// hidden name); the source is still at its own. Until [`Stage::Done`]
    /// a move that dies leaves the program's answer EXDEV.
    Installed,
    /// The copy is installed and the source has left its name, found to
    /// be what was copied: for every observer the rename has happened.
    /// What follows (unlinking or deleting the source set aside, dropping
    /// the old destination) leaves at worst hidden leftovers if the mover
    /// dies (`xrename clean`), so the program's answer is then 0. (Only
    /// a file whose unlink fails may still be put back and the move undone;
    /// the mover dying inside that undo leaves two copies, never none.)
    Done,
}

/// A callback told each [`Stage`] a move reaches, in order.
#[derive(Clone)]
pub struct Stages(pub Arc<dyn Fn(Stage) + Send + Sync>);

impl std::fmt::Debug for Stages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stages(..)")
    }
}

impl Stages {
    fn tell(this: &Option<Stages>, stage: Stage) {
        if let Some(s) = this {
            (s.0)(stage);
        }
    }
}

/// Moves `req.old` to `req.new` across devices, or fails with the errno a
/// same-filesystem rename would have given, leaving everything as it was.
///
/// The program only ever sees errnos `rename(2)` documents, each with its
/// meaning there ([`program_errno`]): anything else (a syscall the kernel or
/// a sandbox does not offer, EAGAIN, EINTR, EFBIG, EMFILE, ...) gives it the
/// kernel's EXDEV back, so that it can do its own fallback: a failed move
/// has changed nothing.
pub fn rename(req: &Request<'_>, opts: &Options, report: &mut Report) -> Result<()> {
    emulate(req, opts, report).map_err(|e| Error { errno: program_errno(&e), ..e })
}

/// The errnos `rename(2)`, `renameat(2)` and `renameat2(2)` document
/// (EIO too: the kernel's rename returns it for a failed write).
pub const RENAME_ERRNOS: [Errno; 20] = [
    Errno::ACCESS,
    Errno::BADF,
    Errno::BUSY,
    Errno::DQUOT,
    Errno::EXIST,
    Errno::FAULT,
    Errno::INVAL,
    Errno::IO,
    Errno::ISDIR,
    Errno::LOOP,
    Errno::MLINK,
    Errno::NAMETOOLONG,
    Errno::NOENT,
    Errno::NOMEM,
    Errno::NOSPC,
    Errno::NOTDIR,
    Errno::NOTEMPTY,
    Errno::PERM,
    Errno::ROFS,
    Errno::XDEV,
];

/// What the program is told of a failed move. An errno `rename(2)` does
/// not document becomes EXDEV. A step the kernel's rename never makes
/// (metadata, sizing or syncing the copy: [`error::Origin::Copy`]) keeps
/// only the errnos that mean there what they mean for rename (no space, no
/// quota, an I/O error, no memory); anything else from it (a policy's EPERM
/// or EACCES, a filesystem's EINVAL) gives EXDEV. Reading the source's data
/// ([`error::Origin::Read`]) is nothing rename does: EXDEV, whatever failed.
pub fn program_errno(e: &Error) -> Errno {
    const COPY_ERRNOS: [Errno; 4] = [Errno::NOSPC, Errno::DQUOT, Errno::IO, Errno::NOMEM];
    let keeps = match e.origin {
        Origin::Rename => RENAME_ERRNOS.contains(&e.errno),
        Origin::Copy => COPY_ERRNOS.contains(&e.errno),
        Origin::Read => false,
    };
    if keeps { e.errno } else { Errno::XDEV }
}

fn emulate(req: &Request<'_>, opts: &Options, report: &mut Report) -> Result<()> {
    let flags = RenameFlags::from_bits_retain(req.flags);
    if !RenameFlags::NOREPLACE.contains(flags) {
        // RENAME_EXCHANGE cannot be atomic across filesystems, and
        // RENAME_WHITEOUT or unknown flags are the kernel's business: its
        // EXDEV stands.
        return Err(Error::new(Errno::XDEV, "renameat2 flags"));
    }
    let src = Entry::open(req.old_dir, req.old)?;
    let dst = Entry::open(req.new_dir, req.new)?;
    // A source changed or replaced during the move is moved again, as it is.
    for _ in 0..4 {
        let started = seen::now();
        let (st, dst_st) = match check::preflight(&src, &dst, flags)? {
            check::Verdict::SameFile => return Ok(()),
            check::Verdict::Move { src, dst } => (src, dst),
        };
        report.kind = Some(stat::file_type(&st));
        let dest = match (flags.contains(RenameFlags::NOREPLACE), dst_st.is_some()) {
            (true, _) => install::Dest::MustNotExist,
            (false, true) => install::Dest::Present,
            (false, false) => install::Dest::Absent,
        };
        match move_object(&src, &st, started, &dst, dest, opts, report) {
            Err(e) if e.next == Next::Retry => {
                // A source left at a hidden name by a failed put-back stays named.
                *report = Report { kind: report.kind, leftover: report.leftover.take(), ..Report::default() };
            }
            other => return other,
        }
    }
    // It keeps changing under us: leave the program the kernel's answer.
    Err(Error::new(Errno::XDEV, source::SOURCE_CHANGED))
}

fn move_object(
    src: &Entry,
    st: &Statx,
    started: seen::Stamp,
    dst: &Entry,
    dest: install::Dest,
    opts: &Options,
    report: &mut Report,
) -> Result<()> {
    let kind = stat::file_type(st);
    if kind != FileType::RegularFile && stat::append_only(dst.dir.as_fd()) {
        // Only a file can appear there at once (linked from O_TMPFILE); any
        // other object needs a hidden temp that could never be renamed away.
        return Err(Error::new(Errno::XDEV, "append-only destination directory"));
    }
    // An existing destination on overlayfs may come from the lower layer:
    // keeping it for a rollback (exchange, link) would copy it up whole, or
    // fail with EXDEV for a directory. The kernel replaces it in place, and
    // so do we, once the source is taken, when nothing else can fail.
    let replacing = dest == install::Dest::Present && source::on_overlayfs(dst.dir.as_fd());
    let durability = Durability::new(opts.fsync);
    let progress = opts.progress.as_deref();
    // Read once per move: files the program holds a lease on are never opened.
    let leases = match (&opts.leases, kind) {
        (Some(given), _) => given.clone(),
        (None, FileType::RegularFile | FileType::Directory) => copy::OwnLeases::read(),
        (None, _) => copy::OwnLeases::default(),
    };
    let route = copy::Route::default();
    let inherits = meta::may_inherit(dst.dir.as_fd());
    let job = copy::Job { durability, progress, leases: &leases, route: &route, inherits, threads: opts.threads };
    let mut cwd = None;
    let (tmp, seen, check, records) = match kind {
        FileType::RegularFile => {
            let c = file::copy_file(src, st, dst, job, opts.links.as_deref(), report)?;
            (c.tmp, c.seen, Some(c.check), None)
        }
        FileType::Directory if !opts.dirs => return Err(Error::new(Errno::XDEV, "directories left to the program")),
        FileType::Directory => {
            let at = opts.follow_cwd.then(|| stat::fstat(rustix::fs::CWD).ok()).flatten().map(|st| stat::id(&st));
            let c = dir::copy_tree(src, st, dst, job, at, report)?;
            cwd = at.zip(c.cwd);
            (c.tmp, c.seen, None, Some(c.records))
        }
        _ => {
            let (tmp, seen) = node::copy_node(src, st, started, dst, inherits, report)?;
            (tmp, seen, None, None)
        }
    };
    let verify = check.as_ref().and_then(|c| c.verify());
    // Removes the taken source: a tree entry by entry (it cannot fail any
    // more); anything else unlinked, or put back if `undoable`.
    let finish = |taken, undoable, report: &mut Report| match &records {
        Some(records) => {
            dir::delete_taken(src, taken, &seen, records, dst, durability, opts.threads, report);
            Ok(())
        }
        None => source::finish(src, taken, durability, undoable, report),
    };
    // Takes the source from its name, then looks for writers once more: one
    // that opened it by name during the copy is seen now, when no one can
    // any more. If there is one, the source goes back (and the install is
    // undone): EXDEV.
    let take = |report: &mut Report| {
        let taken = source::take(src, &seen, verify, report)?;
        let rechecked = match (&check, &records) {
            (Some(check), _) => check.writers(),
            (None, Some(_)) => dir::check_writers(src, &taken),
            (None, None) => Ok(()),
        };
        if let Err(e) = rechecked {
            if let source::Taken::Aside(aside) = &taken {
                source::give_back(src.dir.as_fd(), aside, &src.name, report);
            }
            return Err(e);
        }
        Ok(taken)
    };
    if replacing {
        let taken = take(report)?;
        let durable = install::replace(tmp, dst, durability).inspect_err(|_| {
            if let source::Taken::Aside(aside) = &taken {
                source::give_back(src.dir.as_fd(), aside, &src.name, report);
            }
        })?;
        // The source left its name before the install, and nothing below
        // can fail: the rename has happened.
        Stages::tell(&opts.stages, Stage::Done);
        match (durable, taken) {
            (true, taken) => finish(taken, false, report)?,
            // Installed for good but maybe not durable: the source stays.
            (false, source::Taken::Aside(aside)) => report.leftover = Some(aside),
            (false, source::Taken::InPlace) => report.leftover = Some(src.name.clone()),
        }
    } else {
        // Dropped without commit, `installed` puts the old destination back:
        // whatever fails after the install, including losing the claim on the
        // source to another rename, withdraws it.
        let withdraw = records.as_ref().map(|records| dir::Withdraw { original: src, records });
        let rollback = withdraw.as_ref().map(|w| w as &dyn install::Rollback);
        let installed = install::install(tmp, dst, dest, durability, rollback)?;
        Stages::tell(&opts.stages, Stage::Installed);
        let taken = take(report)?;
        Stages::tell(&opts.stages, Stage::Done);
        finish(taken, true, report)?;
        installed.commit();
    }
    if let (FileType::RegularFile, Some(links)) = (kind, &opts.links) {
        links.moved(&seen, dst);
    }
    if let Some((was, copy)) = cwd {
        follow_cwd(was, copy);
    }
    Ok(())
}

/// The calling thread's working directory was the directory `was` of a
/// tree just moved: it goes to its copy, `copy`, as the kernel's rename
/// would have kept it on the moved directory (else relative paths would
/// reach a deleted directory). Unless it changed meanwhile (another
/// thread's `chdir`): then it stays where that put it.
fn follow_cwd(was: stat::Id, copy: std::os::fd::OwnedFd) {
    if stat::fstat(rustix::fs::CWD).is_ok_and(|now| stat::id(&now) == was) {
        let _ = rustix::process::fchdir(&copy);
    }
}
