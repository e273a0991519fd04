//! Symlinks and special files (FIFOs, character and block devices, sockets).
//!
//! These have no data to copy: the object is recreated (`symlinkat` with
//! the same target text, dangling or not; `mknodat` with the same type and
//! device number), then given the source's owner (`lchown`, never following
//! a symlink), extended attributes where the filesystem allows them, mode
//! (not for symlinks, whose mode Linux ignores) and nanosecond times
//! (`utimensat` with `AT_SYMLINK_NOFOLLOW`), as `mv` does.
//!
//! They are made by name, so the xattr calls go through
//! `/proc/thread-self/fd/<dir>/<name>` with the `l*xattr` functions, which never
//! follow the last component.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use rustix::fs::{AtFlags, FileType, Mode, Statx, XattrFlags};
use rustix::io::Errno;

use super::Report;
use super::check::file_type;
use super::error::{At, Error, Result, retry};
use super::install::Temp;
use super::meta::{SPECIAL_BITS, inherited_acls, read_growing, timestamps};
use super::path::Entry;
use super::seen::{Seen, Stamp};

/// Copies the symlink or special file `src` (seen as `st`, after
/// `started`) under a hidden name in `dst`'s directory, ready to install;
/// with what it was, for the check when the source is taken.
pub fn copy_node<'d>(
    src: &Entry,
    st: &Statx,
    started: Stamp,
    dst: &'d Entry,
    report: &mut Report,
) -> Result<(Temp<'d>, Seen)> {
    let (sdir, ddir) = (src.dir.as_fd(), dst.dir.as_fd());
    let mut tmp = Temp::named(ddir, false, |n| create(sdir, &src.name, st, ddir, n))?;
    let name = tmp.name().expect("named").to_owned();
    // What was made there, before anyone could rename something over it.
    let made = super::check::lstat(ddir, &name).at("stat new node")?;
    if file_type(&made) != file_type(st) {
        return Err(Error::new(Errno::XDEV, "the hidden name was taken over"));
    }
    tmp.made(&made);
    apply_meta(sdir, &src.name, st, ddir, &name)?;
    report.files += 1;
    Ok((tmp, Seen::record(st, started)))
}

/// Creates at `dst_dir`/`dst_name` a copy of the symlink or special file
/// `src_dir`/`src_name`, seen as `st`. Fails with EEXIST if the name is taken.
pub fn create(
    src_dir: BorrowedFd<'_>,
    src_name: &CStr,
    st: &Statx,
    dst_dir: BorrowedFd<'_>,
    dst_name: &CStr,
) -> rustix::io::Result<()> {
    let kind = file_type(st);
    match kind {
        FileType::Symlink => {
            let target = retry(|| rustix::fs::readlinkat(src_dir, src_name, Vec::new()))?;
            retry(|| rustix::fs::symlinkat(&*target, dst_dir, dst_name))
        }
        FileType::Fifo | FileType::CharacterDevice | FileType::BlockDevice | FileType::Socket => {
            let dev = rustix::fs::makedev(st.stx_rdev_major, st.stx_rdev_minor);
            retry(|| rustix::fs::mknodat(dst_dir, dst_name, kind, Mode::from_raw_mode(0o600), dev))
        }
        _ => Err(Errno::INVAL),
    }
}

/// Applies owner, xattrs, mode and times of `st` to `dst_dir`/`dst_name`.
pub fn apply_meta(
    src_dir: BorrowedFd<'_>,
    src_name: &CStr,
    st: &Statx,
    dst_dir: BorrowedFd<'_>,
    dst_name: &CStr,
) -> Result<()> {
    let is_link = file_type(st) == FileType::Symlink;
    let nofollow = AtFlags::SYMLINK_NOFOLLOW;
    let (uid, gid) = (rustix::fs::Uid::from_raw(st.stx_uid), rustix::fs::Gid::from_raw(st.stx_gid));
    let mut mode = u32::from(st.stx_mode) & 0o7777;
    match retry(|| rustix::fs::chownat(dst_dir, dst_name, Some(uid), Some(gid), nofollow)) {
        Ok(()) => {}
        Err(Errno::PERM | Errno::INVAL) => {
            let _ = retry(|| rustix::fs::chownat(dst_dir, dst_name, None, Some(gid), nofollow));
            mode &= !SPECIAL_BITS;
        }
        Err(e) => return Err(Error::new(e, "chown")),
    }
    copy_xattrs(src_dir, src_name, dst_dir, dst_name)?;
    if !is_link {
        chmod_node(dst_dir, dst_name, mode)?;
    }
    retry(|| rustix::fs::utimensat(dst_dir, dst_name, &timestamps(st), nofollow)).at("set times")
}

/// Sets the mode of the node `name` itself, never following a symlink that
/// someone renamed over our hidden name meanwhile (they would get the mode
/// of their target changed by us): `fchmodat2(AT_SYMLINK_NOFOLLOW)`, or on
/// older kernels through an `O_PATH` descriptor of what is there, checked
/// not to be a symlink, by its `/proc/thread-self/fd` link. Without either,
/// the move is refused (EXDEV).
fn chmod_node(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<()> {
    match retry(|| super::sys::chmod_nofollow(dir, name, mode)) {
        Ok(()) => return Ok(()),
        Err(Errno::NOSYS | Errno::PERM) => {} // no fchmodat2, or a filter refusing it
        Err(Errno::OPNOTSUPP) => return Err(Error::new(Errno::XDEV, "chmod: a symlink replaced the new node")),
        Err(e) => return Err(Error::new(e, "chmod")),
    }
    let flags = rustix::fs::OFlags::PATH | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC;
    let fd = retry(|| rustix::fs::openat(dir, name, flags, Mode::empty())).at("open new node")?;
    if file_type(&super::check::fstat(fd.as_fd()).at("stat new node")?) == FileType::Symlink {
        return Err(Error::new(Errno::XDEV, "chmod: a symlink replaced the new node"));
    }
    let path = CString::new(format!("/proc/thread-self/fd/{}", fd.as_raw_fd())).expect("no NUL");
    match retry(|| rustix::fs::chmodat(rustix::fs::CWD, &*path, Mode::from_raw_mode(mode), AtFlags::empty())) {
        Ok(()) => Ok(()),
        Err(Errno::NOENT) => Err(Error::new(Errno::XDEV, "chmod: no fchmodat2 and no /proc")),
        Err(e) => Err(Error::new(e, "chmod")),
    }
}

fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> CString {
    let mut p = format!("/proc/thread-self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.to_bytes());
    CString::new(p).expect("no NUL")
}

/// Extended attributes of a node; every error but a real I/O one is a skip,
/// as with mv (symlinks take no `user.*` attributes, `/proc` may be missing).
fn copy_xattrs(src_dir: BorrowedFd<'_>, src_name: &CStr, dst_dir: BorrowedFd<'_>, dst_name: &CStr) -> Result<()> {
    let (src, dst) = (proc_path(src_dir, src_name), proc_path(dst_dir, dst_name));
    let names = read_growing(|buf| rustix::fs::llistxattr(&*src, buf)).unwrap_or_default();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).expect("split on NUL");
        let Ok(value) = read_growing(|buf| rustix::fs::lgetxattr(&*src, &*cname, buf)) else { continue };
        if let Err(e @ (Errno::IO | Errno::NOSPC | Errno::DQUOT)) =
            retry(|| rustix::fs::lsetxattr(&*dst, &*cname, &value, XattrFlags::empty()))
        {
            return Err(Error::new(e, "write xattr"));
        }
    }
    // ACLs the new node inherited from a default ACL of its directory, and
    // the source does not have, must go: they would grant what the original
    // did not. Removed on the directory and name (removexattrat, no /proc
    // needed, never following a symlink), else through /proc; if neither
    // works while the directory has a default ACL, the move is refused.
    for acl in inherited_acls(&names) {
        let removed = match retry(|| super::sys::removexattr_nofollow(dst_dir, dst_name, acl)) {
            Err(Errno::NOSYS) => retry(|| rustix::fs::lremovexattr(&*dst, acl)),
            other => other,
        };
        match removed {
            Ok(()) | Err(Errno::NODATA | Errno::OPNOTSUPP) => {}
            Err(_) if !has_default_acl(dst_dir) => {}
            Err(_) => return Err(Error::new(Errno::XDEV, "remove inherited ACL: cannot (no /proc)")),
        }
    }
    Ok(())
}

/// Whether the directory `dir` has a default ACL (that new entries inherit).
fn has_default_acl(dir: BorrowedFd<'_>) -> bool {
    !matches!(
        retry(|| rustix::fs::fgetxattr(dir, c"system.posix_acl_default", &mut [0u8; 0][..])),
        Err(Errno::NODATA | Errno::OPNOTSUPP)
    )
}
