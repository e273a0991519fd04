//! Copying a regular file for a move.
//!
//! 1. Open the source once, `O_NOFOLLOW` (and `O_NOATIME` where allowed),
//!    check it is the inode the preflight saw, and record it
//!    ([`Seen`]); from then on only that descriptor is read.
//! 2. Refuse it if any process has it open for writing
//!    ([`writers`](super::writers)): a copy cannot follow its writer.
//! 3. Copy data and holes into a private temp file in the destination
//!    directory ([`copy`](super::copy)), then metadata ([`meta`](super::meta)).
//! 4. Check the source did not change meanwhile (else start over), and
//!    `fsync` the temp: its data must be durable before any name points at it.
//!
//! The caller ([`super::rename`]) then installs it, takes the source from
//! its name (comparing it once more with what was recorded, and for a racy
//! file with the copy's content: [`source::take`](super::source::take)),
//! removes it and drops the old destination, in that order.
//!
//! A source with several hard links becomes an independent copy at the
//! destination and loses one name, as with mv.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::io::Errno;

use super::error::{At, Error, Result};
use super::install::Temp;
use super::links::Links;
use super::meta::{self, Obj};
use super::path::Entry;
use super::report::Report;
use super::seen::{self, Seen};
use super::source::{SOURCE_CHANGED, Verify};
use super::stat::{fstat, same_inode};
use super::{copy, writers};

/// The step name when the program holds a lease on a file to be moved.
pub const OWN_LEASE: &str = "the program holds a lease or a record lock on the source";

/// From this size on, writers are also looked for before the copy.
const EARLY_PROBE: u64 = 1 << 20;

/// A file copied into a temp, ready to install.
pub struct Copied<'d> {
    /// The copy.
    pub tmp: Temp<'d>,
    /// What the source was when its copy began.
    pub seen: Seen,
    /// What to compare once the source is taken.
    pub check: Check,
}

/// The open source, and for a racy file a second descriptor of its copy,
/// whose contents are compared once the source is taken.
pub struct Check {
    src: OwnedFd,
    copy: Option<OwnedFd>,
    times: rustix::fs::Timestamps,
}

impl Check {
    /// Refuses the move if the source is open for writing anywhere; made
    /// again once the source has left its name.
    pub fn writers(&self) -> Result<()> {
        writers::check(&[self.src.as_fd()])
    }

    /// What [`source::take`](super::source::take) compares.
    pub fn verify(&self) -> Verify<'_> {
        self.copy.as_ref().map(|c| (self.src.as_fd(), c.as_fd(), &self.times))
    }
}

/// Copies the regular file `src` (seen as `st`) into a temp file in `dst`'s
/// directory, durable and ready to install (or, for another name of a
/// file moved earlier, a hard link to that copy, from `links`). `progress`
/// counts the bytes copied, for a display in another thread.
pub fn copy_file<'d>(
    src: &Entry,
    st: &rustix::fs::Statx,
    dst: &'d Entry,
    job: copy::Job<'_>,
    links: Option<&Links>,
    report: &mut Report,
) -> Result<Copied<'d>> {
    let copy::Job { durability, progress, leases, route, inherits, .. } = job;
    if leases.holds(st.stx_ino) {
        return Err(Error::new(Errno::XDEV, OWN_LEASE));
    }
    let fd = match copy::open_source(src.dir.as_fd(), &src.name) {
        Ok(fd) => fd,
        Err(Errno::LOOP | Errno::NOENT | Errno::NXIO) => return Err(Error::changed(SOURCE_CHANGED)),
        Err(e) => return Err(Error::new(e, "open source")),
    };
    let started = seen::now();
    let st_now = fstat(fd.as_fd()).at("stat source")?;
    if !same_inode(st, &st_now) {
        return Err(Error::changed(SOURCE_CHANGED));
    }
    let seen = Seen::record(&st_now, started);
    copy::within_limit(st_now.stx_size, copy::size_limit())?;
    // The probe that counts is made once the source has left its name
    // (Check::writers); this one only spares copying a big file for nothing.
    if st_now.stx_size >= EARLY_PROBE {
        writers::check(&[fd.as_fd()])?;
    }
    let times = meta::timestamps(&st_now);
    if let Some(tmp) = links.and_then(|l| l.reuse(fd.as_fd(), &st_now, dst)) {
        // Another name of it moved earlier: a hard link to that copy.
        let copy = match seen.racy() {
            true => Some(copy::open_source(tmp.at(), tmp.name().expect("named")).at("open copy")?),
            false => None,
        };
        return Ok(Copied { tmp, seen, check: Check { src: fd, copy, times } });
    }
    let tmp = Temp::file(dst.dir.as_fd(), &dst.name)?;
    let early = durability.early_writeback(st_now.stx_size).then_some(durability);
    copy::copy_data(fd.as_fd(), tmp.fd(), &st_now, route, &mut report.bytes, progress, early)?;
    meta::apply(Obj::Fd(fd.as_fd()), Obj::Fd(tmp.fd()), &st_now, meta::Made { st: None, inherits })?;
    // Changed while it was copied: the copy may be torn. Start over.
    if !seen.unchanged(&fstat(fd.as_fd()).at("stat source")?) {
        return Err(Error::changed(SOURCE_CHANGED));
    }
    durability.file(tmp.fd())?;
    let copy = match seen.racy() {
        true => Some(dup(tmp.fd())?),
        false => None,
    };
    report.files += 1;
    progress.inspect(|p| p.object());
    Ok(Copied { tmp, seen, check: Check { src: fd, copy, times } })
}

fn dup(fd: BorrowedFd<'_>) -> Result<OwnedFd> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0).at("dup")
}
