//! Moving a symlink or a special file (FIFOs, character and block devices,
//! sockets).
//!
//! The object is recreated under a hidden name next to the destination
//! ([`special::create`](super::special::create)), checked to be what was
//! made there (a shared directory lets others rename something over the
//! name), and given the source's metadata by directory and name, never
//! following it ([`meta`](super::meta)), as `mv` does. The orchestrator
//! then installs it and takes the source.

use std::os::fd::AsFd;

use rustix::fs::Statx;
use rustix::io::Errno;

use super::error::{At, Error, Result};
use super::install::Temp;
use super::meta::{self, Obj};
use super::path::Entry;
use super::report::Report;
use super::seen::{Seen, Stamp};
use super::stat::{file_type, lstat};

/// Copies the symlink or special file `src` (seen as `st`, after
/// `started`) under a hidden name in `dst`'s directory, ready to install;
/// with what it was, for the check when the source is taken. `inherits`:
/// the destination directory has a default ACL ([`meta::may_inherit`]).
pub fn copy_node<'d>(
    src: &Entry,
    st: &Statx,
    started: Stamp,
    dst: &'d Entry,
    inherits: bool,
    report: &mut Report,
) -> Result<(Temp<'d>, Seen)> {
    let (sdir, ddir) = (src.dir.as_fd(), dst.dir.as_fd());
    let mut tmp = Temp::named(ddir, false, |n| super::special::create(sdir, &src.name, st, ddir, n))?;
    let name = tmp.name().expect("named").to_owned();
    // What was made there, before anyone could rename something over it.
    let made = lstat(ddir, &name).at("stat new node")?;
    if file_type(&made) != file_type(st) {
        return Err(Error::new(Errno::XDEV, "the hidden name was taken over"));
    }
    tmp.made(&made);
    let made = meta::Made { st: Some(&made), inherits };
    meta::apply(Obj::At(sdir, &src.name), Obj::At(ddir, &name), st, made)?;
    report.files += 1;
    Ok((tmp, Seen::record(st, started)))
}
