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
    let tmp = Temp::named(ddir, false, |n| create(sdir, &src.name, st, ddir, n))?;
    apply_meta(sdir, &src.name, st, ddir, tmp.name().expect("named"))?;
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
        // Our own fresh node in a directory only we write to at this point
        // (a private temp tree), or under a fresh random name.
        retry(|| rustix::fs::chmodat(dst_dir, dst_name, Mode::from_raw_mode(mode), AtFlags::empty())).at("chmod")?;
    }
    retry(|| rustix::fs::utimensat(dst_dir, dst_name, &timestamps(st), nofollow)).at("set times")
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
    for acl in inherited_acls(&names) {
        let _ = retry(|| rustix::fs::lremovexattr(&*dst, acl));
    }
    Ok(())
}
