//! Copying a regular file for a move.
//!
//! 1. Open the source once, `O_NOFOLLOW`, and check it is the inode the
//!    preflight saw; from then on only that descriptor is read.
//! 2. Copy data and holes into a private temp file in the destination
//!    directory ([`copy`](super::copy)), then metadata ([`meta`](super::meta)).
//! 3. `fsync` the temp: its data must be durable before any name points at it.
//!
//! The caller ([`super::rename`]) then installs it, removes the source and
//! drops the old destination, in that order.
//!
//! A source with several hard links becomes an independent copy at the
//! destination and loses one name, as with mv.

use std::os::fd::AsFd;

use rustix::fs::{Mode, OFlags, Statx};
use rustix::io::Errno;

use super::check::{fstat, same_inode};
use super::error::{At, Error, Result, retry};
use super::install::Temp;
use super::path::Entry;
use super::source::file_changed;
use super::{Options, Report, copy, meta};

/// The step name used when the source is not the inode the preflight saw.
pub(crate) const SOURCE_CHANGED: &str = "source changed";

/// Copies the regular file `src` (seen as `st`) into a temp file in `dst`'s
/// directory, durable and ready to install.
pub fn copy_file<'d>(src: &Entry, st: &Statx, dst: &'d Entry, opts: &Options, report: &mut Report) -> Result<Temp<'d>> {
    // O_NONBLOCK: if the name now holds a FIFO, do not hang on it.
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match retry(|| rustix::fs::openat(src.dir.as_fd(), &*src.name, flags, Mode::empty())) {
        Ok(fd) => fd,
        Err(Errno::LOOP | Errno::NOENT | Errno::NXIO) => {
            return Err(Error::new(Errno::AGAIN, SOURCE_CHANGED));
        }
        Err(e) => return Err(Error::new(e, "open source")),
    };
    let st_now = fstat(fd.as_fd()).at("stat source")?;
    if !same_inode(st, &st_now) || file_changed(&st_now, st) {
        return Err(Error::new(Errno::AGAIN, SOURCE_CHANGED));
    }
    // The descriptor was opened non-blocking only so as not to hang on a FIFO.
    let _ = rustix::fs::fcntl_setfl(&fd, rustix::fs::OFlags::empty());
    let tmp = Temp::file(dst.dir.as_fd())?;
    let early = opts.fsync && st_now.stx_size >= copy::EARLY_WRITEBACK;
    copy::copy_data(fd.as_fd(), tmp.fd(), st_now.stx_size, &mut report.bytes, opts.progress.as_deref(), early)?;
    meta::apply(fd.as_fd(), tmp.fd(), &st_now)?;
    // Changed while it was copied: the copy may be torn. Start over.
    if file_changed(&fstat(fd.as_fd()).at("stat source")?, &st_now) {
        return Err(Error::new(Errno::AGAIN, SOURCE_CHANGED));
    }
    if opts.fsync {
        retry(|| rustix::fs::fsync(tmp.fd())).at("fsync temp file")?;
    }
    report.files += 1;
    Ok(tmp)
}
