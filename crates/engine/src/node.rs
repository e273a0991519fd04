//! Moving a symlink or a special file (FIFOs, character and block devices,
//! sockets).
//!
//! The object is recreated ([`special::create`](super::special::create))
//! and given the source's metadata by directory and name, never following
//! it ([`meta`](super::meta)), as `mv` does. Both happen under a hidden
//! name next to the destination or, where others may write there, inside
//! a private directory made for it ([`Temp::by_name`]): in a shared
//! directory anyone could rename their own symlink over a hidden name, to
//! have its target's mode changed or to have it installed in place of the
//! copy (issue 11). The orchestrator then installs it and takes the source.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::Statx;

use super::error::Result;
use super::install::Temp;
use super::meta::{self, Obj};
use super::path::Entry;
use super::report::Report;
use super::seen::{Seen, Stamp};

/// Copies the symlink or special file `src` (seen as `st`, after
/// `started`) next to `dst`, ready to install; with what it was, for the check when the source is taken.
/// `inherits`: the destination directory has a default ACL
/// ([`meta::may_inherit`]), which a private directory in it has too.
pub fn copy_node<'d>(
    src: &Entry,
    st: &Statx,
    started: Stamp,
    dst: &'d Entry,
    inherits: bool,
    report: &mut Report,
) -> Result<(Temp<'d>, Seen)> {
    let sdir = src.dir.as_fd();
    super::special::Listening::default().check(st, sdir)?;
    let create = |at: BorrowedFd<'_>, n: &CStr| super::special::create(sdir, &src.name, st, at, n);
    let tmp = Temp::by_name(dst.dir.as_fd(), &dst.name, create)?;
    let name = tmp.name().expect("named");
    let made = meta::Made { st: tmp.made(), inherits };
    meta::apply(Obj::At(sdir, &src.name), Obj::At(tmp.at(), name), st, made)?;
    report.files += 1;
    Ok((tmp, Seen::record(st, started)))
}
