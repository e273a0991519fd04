//! Metadata, as `mv` keeps it across devices.
//!
//! Order matters, and follows uutils and GNU coreutils (copy.c):
//! 1. owner and group first: `chown` clears setuid/setgid, and a refused
//!    `chown` (not root, foreign owner) is not an error, but then the group
//!    alone is tried and setuid, setgid and sticky are dropped, so the copy
//!    never grants privileges to someone else's file;
//! 2. extended attributes, ACLs included (`system.posix_acl_*`); one the
//!    destination filesystem does not support is skipped, as mv does, and
//!    so is a privileged namespace (`security.*`, `trusted.*`) that the
//!    caller may read but not write; any other error fails the move;
//! 3. the mode, after chown so that setuid/setgid survive;
//! 4. atime and mtime, with nanoseconds, last, because every step above
//!    may touch the file.

use std::ffi::CStr;
use std::os::fd::BorrowedFd;

use rustix::fs::{Mode, Statx, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::error::{At, Error, Result, retry};

/// setuid, setgid and sticky: dropped when the owner cannot be kept.
pub(crate) const SPECIAL_BITS: u32 = libc::S_ISUID | libc::S_ISGID | libc::S_ISVTX;

/// Applies owner, xattrs, mode and times of `st` (read from `src`) to `dst`.
pub fn apply(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, st: &Statx) -> Result<()> {
    let mut mode = u32::from(st.stx_mode) & 0o7777;
    if !chown(dst, st)? {
        mode &= !SPECIAL_BITS;
    }
    copy_xattrs(src, dst)?;
    match retry(|| rustix::fs::fchmod(dst, Mode::from_raw_mode(mode))) {
        // Our own new file: a refusal means the filesystem cannot represent
        // the mode (vfat, some FUSE). mv keeps going there, and so do we.
        Ok(()) | Err(Errno::PERM | Errno::OPNOTSUPP) => {}
        Err(e) => return Err(Error::new(e, "chmod")),
    }
    set_times(dst, st)
}

/// Sets owner and group; returns false when the owner could not be kept.
fn chown(dst: BorrowedFd<'_>, st: &Statx) -> Result<bool> {
    let uid = rustix::fs::Uid::from_raw(st.stx_uid);
    let gid = rustix::fs::Gid::from_raw(st.stx_gid);
    match retry(|| rustix::fs::fchown(dst, Some(uid), Some(gid))) {
        Ok(()) => Ok(true),
        Err(Errno::PERM | Errno::INVAL) => {
            // Keep at least the group if we are a member of it; ignore failure.
            let _ = retry(|| rustix::fs::fchown(dst, None, Some(gid)));
            Ok(false)
        }
        Err(e) => Err(Error::new(e, "chown")),
    }
}

/// The atime and mtime of `st`.
pub(crate) fn timestamps(st: &Statx) -> Timestamps {
    let ts = |t: &rustix::fs::StatxTimestamp| Timespec { tv_sec: t.tv_sec, tv_nsec: t.tv_nsec.into() };
    Timestamps { last_access: ts(&st.stx_atime), last_modification: ts(&st.stx_mtime) }
}

/// Sets atime and mtime of `dst` to those of `st`.
pub fn set_times(dst: BorrowedFd<'_>, st: &Statx) -> Result<()> {
    retry(|| rustix::fs::futimens(dst, &timestamps(st))).at("set times")
}

/// Copies every extended attribute `src` has that `dst`'s filesystem takes.
pub fn copy_xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> Result<()> {
    let names = match read_growing(|buf| rustix::fs::flistxattr(src, buf)) {
        Ok(names) => names,
        Err(Errno::OPNOTSUPP | Errno::NOSYS) => Vec::new(),
        Err(e) => return Err(Error::new(e, "list xattrs")),
    };
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = std::ffi::CString::new(name).expect("split on NUL");
        let value = match read_growing(|buf| rustix::fs::fgetxattr(src, &*cname, buf)) {
            Ok(v) => v,
            Err(Errno::NODATA | Errno::OPNOTSUPP) => continue, // removed meanwhile, or unreadable kind
            Err(e) => return Err(Error::new(e, "read xattr")),
        };
        match retry(|| rustix::fs::fsetxattr(dst, &*cname, &value, XattrFlags::empty())) {
            Ok(()) => {}
            Err(Errno::OPNOTSUPP | Errno::NOSYS) => {}
            Err(Errno::PERM | Errno::ACCESS) if privileged(name) => {}
            Err(e) => return Err(Error::new(e, "write xattr")),
        }
    }
    for acl in inherited_acls(&names) {
        // Absent, or a filesystem that has no such thing (or refuses to
        // say): nothing was inherited. Only an I/O error is an error.
        if let Err(e @ (Errno::IO | Errno::NOSPC | Errno::DQUOT)) = retry(|| rustix::fs::fremovexattr(dst, acl)) {
            return Err(Error::new(e, "remove inherited ACL"));
        }
    }
    Ok(())
}

/// The ACLs a new object may have inherited from its directory's default
/// ACL but the source does not have: they must go, or the copy would grant
/// what the original did not (a rename keeps the inode, inherits nothing).
pub(crate) fn inherited_acls(source_names: &[u8]) -> impl Iterator<Item = &'static CStr> + '_ {
    [c"system.posix_acl_access", c"system.posix_acl_default"]
        .into_iter()
        .filter(move |acl| !source_names.split(|&b| b == 0).any(|n| n == acl.to_bytes()))
}

fn privileged(name: &[u8]) -> bool {
    name.starts_with(b"security.") || name.starts_with(b"trusted.")
}

/// Calls an xattr read function with a growing buffer until it fits.
pub(crate) fn read_growing(mut f: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>) -> rustix::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    loop {
        match retry(|| f(&mut buf)) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            // Values and lists are at most 64 KiB (XATTR_SIZE_MAX, XATTR_LIST_MAX).
            Err(Errno::RANGE) if buf.len() < 1 << 17 => buf.resize(buf.len() * 4, 0),
            Err(e) => return Err(e),
        }
    }
}
