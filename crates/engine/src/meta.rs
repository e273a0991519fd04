//! Metadata, as `mv` keeps it across devices: one policy for every object
//! type (regular files, directories, symlinks, special files).
//!
//! Order matters, and follows uutils and GNU coreutils (copy.c):
//! 1. owner and group first: `chown` clears setuid/setgid, and a refused
//!    `chown` (not root, foreign owner) is not an error, but then the group
//!    alone is tried and setuid, setgid and sticky are dropped, so the copy
//!    never grants privileges to someone else's file;
//! 2. extended attributes, ACLs included (`system.posix_acl_*`): one the
//!    destination cannot hold is skipped, as mv does ([`skip_write`]), but
//!    never an ACL (without it the owning group gets the mask's rights: the
//!    move is refused instead), and attributes that cannot be listed or
//!    read (a policy's ENOSYS or EPERM) refuse the move too; then ACLs the
//!    new object inherited from a default ACL of its directory, and the
//!    source does not have, are removed (a rename inherits nothing), or the
//!    move is refused;
//! 3. the mode, after chown so that setuid/setgid survive (not for a
//!    symlink, whose mode Linux ignores); a refusal leaves the copy's
//!    private 0600/0700, which grants nothing;
//! 4. atime and mtime, with nanoseconds, last, because every step above
//!    may touch the object.
//!
//! Files and directories are reached through a descriptor ([`Obj::Fd`]);
//! symlinks and special files, which cannot be opened for this, by
//! directory and name ([`Obj::At`]), never following the name: the `*at`
//! calls with `AT_SYMLINK_NOFOLLOW` (`fchmodat2`, and the `*xattrat`
//! family of Linux 6.13), else `/proc/thread-self/fd` paths with the `l*`
//! calls; where neither exists, the move is refused (EXDEV). Every failure
//! of these steps is a step of the copy alone ([`Error::copy_step`]): the
//! program sees only ENOSPC, EDQUOT, EIO or EXDEV from them.

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Statx, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

use super::error::{At, Error, Result, retry};
use super::stat::{file_type, fstat};

/// setuid, setgid and sticky: dropped when the owner cannot be kept.
pub const SPECIAL_BITS: u32 = libc::S_ISUID | libc::S_ISGID | libc::S_ISVTX;

/// An object whose metadata is read or written.
#[derive(Debug, Clone, Copy)]
pub enum Obj<'a> {
    /// An open descriptor (regular files, directories).
    Fd(BorrowedFd<'a>),
    /// A name in a directory, never followed (symlinks, special files).
    At(BorrowedFd<'a>, &'a CStr),
}

/// What is known of the new object, to spare calls that would change
/// nothing.
#[derive(Debug, Clone, Copy)]
pub struct Made<'a> {
    /// Its status as made (owner and mode), if read.
    pub st: Option<&'a Statx>,
    /// Whether it may have inherited an ACL from its directory's default
    /// ACL ([`may_inherit`]); if not, there is nothing to remove.
    pub inherits: bool,
}

/// Applies owner, xattrs, mode and times of `st` (read from `src`) to the
/// new object `dst`. A `chown` to the owner it already has, and a `chmod`
/// to the mode it already has (when no ACL was written, which would have
/// changed the mode), are left out.
pub fn apply(src: Obj<'_>, dst: Obj<'_>, st: &Statx, made: Made<'_>) -> Result<()> {
    let kind = file_type(st);
    let mut mode = u32::from(st.stx_mode) & 0o7777;
    let same_owner = made.st.is_some_and(|m| (m.stx_uid, m.stx_gid) == (st.stx_uid, st.stx_gid));
    if !same_owner && !chown(dst, st)? {
        mode &= !SPECIAL_BITS;
    }
    let wrote_acl = copy_xattrs(src, dst, kind, made.inherits)?;
    let same_mode = !wrote_acl && made.st.is_some_and(|m| u32::from(m.stx_mode) & 0o7777 == mode);
    if kind != FileType::Symlink && !same_mode {
        chmod(dst, mode)?;
    }
    set_times(dst, st)
}

/// Whether objects made in `dir` inherit an ACL: it has a default ACL. Asked
/// once per move (a new directory of a copied tree gets its own default ACL
/// only when its metadata is applied, after its children). When that
/// cannot be told, yes.
pub fn may_inherit(dir: BorrowedFd<'_>) -> bool {
    match rustix::fs::fgetxattr_query(dir, c"system.posix_acl_default") {
        Ok(n) => n > 0,
        Err(Errno::NODATA | Errno::OPNOTSUPP) => false,
        Err(_) => true,
    }
}

/// Sets owner and group; returns false when the owner could not be kept.
fn chown(dst: Obj<'_>, st: &Statx) -> Result<bool> {
    let uid = rustix::fs::Uid::from_raw(st.stx_uid);
    let gid = rustix::fs::Gid::from_raw(st.stx_gid);
    let call = |uid, gid| match dst {
        Obj::Fd(fd) => retry(|| rustix::fs::fchown(fd, uid, gid)),
        Obj::At(dir, name) => retry(|| rustix::fs::chownat(dir, name, uid, gid, AtFlags::SYMLINK_NOFOLLOW)),
    };
    match call(Some(uid), Some(gid)) {
        Ok(()) => Ok(true),
        Err(Errno::PERM | Errno::INVAL) => {
            // Keep at least the group if we are a member of it; ignore failure.
            let _ = call(None, Some(gid));
            Ok(false)
        }
        Err(e) => Err(Error::copy_step(e, "chown")),
    }
}

/// Sets the mode of our new object. A refusal (EPERM, or EOPNOTSUPP from a
/// filesystem that cannot represent the mode: vfat, some FUSE) leaves its
/// private creation mode, as mv goes on there.
fn chmod(dst: Obj<'_>, mode: u32) -> Result<()> {
    let done = match dst {
        Obj::Fd(fd) => retry(|| rustix::fs::fchmod(fd, Mode::from_raw_mode(mode))),
        Obj::At(dir, name) => chmod_nofollow(dir, name, mode)?,
    };
    match done {
        Ok(()) | Err(Errno::PERM | Errno::OPNOTSUPP) => Ok(()),
        Err(e) => Err(Error::copy_step(e, "chmod")),
    }
}

/// Sets the mode of the node `name` itself, never following a symlink that
/// someone renamed over our hidden name meanwhile (they would get the mode
/// of their target changed by us): `fchmodat2(AT_SYMLINK_NOFOLLOW)`, or on
/// older kernels through an `O_PATH` descriptor of what is there, checked
/// not to be a symlink, by its `/proc/thread-self/fd` link. Without either,
/// the move is refused (EXDEV). The inner result is the chmod's own.
pub(crate) fn chmod_nofollow(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> Result<rustix::io::Result<()>> {
    let swapped = || Error::new(Errno::XDEV, "chmod: a symlink replaced the new node");
    match retry(|| super::sys::chmod_nofollow(dir, name, mode)) {
        Err(Errno::NOSYS | Errno::PERM) => {} // no fchmodat2, or a filter refusing it
        Err(Errno::OPNOTSUPP) => return Err(swapped()),
        other => return Ok(other),
    }
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = retry(|| rustix::fs::openat(dir, name, flags, Mode::empty())).at_copy("open new node")?;
    if file_type(&fstat(fd.as_fd()).at_copy("stat new node")?) == FileType::Symlink {
        return Err(swapped());
    }
    let path = CString::new(format!("/proc/thread-self/fd/{}", fd.as_raw_fd())).expect("no NUL");
    match retry(|| rustix::fs::chmodat(rustix::fs::CWD, &*path, Mode::from_raw_mode(mode), AtFlags::empty())) {
        Err(Errno::NOENT) => Err(Error::new(Errno::XDEV, "chmod: no fchmodat2 and no /proc")),
        other => Ok(other),
    }
}

/// The atime and mtime of `st`.
pub fn timestamps(st: &Statx) -> Timestamps {
    let ts = |t: &rustix::fs::StatxTimestamp| Timespec { tv_sec: t.tv_sec, tv_nsec: t.tv_nsec.into() };
    Timestamps { last_access: ts(&st.stx_atime), last_modification: ts(&st.stx_mtime) }
}

/// Sets atime and mtime of `dst` to those of `st`.
pub fn set_times(dst: Obj<'_>, st: &Statx) -> Result<()> {
    let times = timestamps(st);
    match dst {
        Obj::Fd(fd) => retry(|| rustix::fs::futimens(fd, &times)),
        Obj::At(dir, name) => retry(|| rustix::fs::utimensat(dir, name, &times, AtFlags::SYMLINK_NOFOLLOW)),
    }
    .at_copy("set times")
}

/// Whether a refused write of the attribute `name` to an object of type
/// `kind` is skipped (the destination cannot hold it, as mv skips it), or
/// fails the move.
pub fn skip_write(errno: Errno, name: &[u8], kind: FileType) -> bool {
    if is_acl(name) {
        // An ACL left behind widens access (without it, the owning group
        // gets the mask's permissions): the move is refused instead.
        return false;
    }
    match errno {
        // The destination filesystem has no such attributes, or none that
        // big (E2BIG: a value over its limit).
        Errno::OPNOTSUPP | Errno::TOOBIG => true,
        // A privileged namespace the caller may read but not write.
        Errno::PERM | Errno::ACCESS if name.starts_with(b"security.") || name.starts_with(b"trusted.") => true,
        // The kernel takes `user.*` on regular files and directories only.
        Errno::PERM if name.starts_with(b"user.") => !matches!(kind, FileType::RegularFile | FileType::Directory),
        _ => false,
    }
}

/// Attributes never copied, as `/etc/xattr.conf` tells mv (libattr's
/// "skip"): XFS's raw forms of its ACLs and capabilities (the ACL itself is
/// copied as `system.posix_acl_*`; written raw onto XFS, a revoked ACL
/// would come back), its DMAPI and MAC attributes, the obsolete `xfsroot.`
/// namespace, EVM signatures (the kernel's alone), AFS metadata.
fn never_copied(name: &[u8]) -> bool {
    name.starts_with(b"trusted.SGI_")
        || name.starts_with(b"xfsroot.")
        || name == b"security.evm"
        || name.starts_with(b"afs.")
        || name.starts_with(b"user.Beagle.")
}

/// ACLs, in every form a filesystem exposes them as an attribute.
fn is_acl(name: &[u8]) -> bool {
    name.starts_with(b"system.posix_acl_") || name == b"system.nfs4_acl" || name == b"system.richacl"
}

/// Copies every extended attribute `src` has that `dst`'s filesystem takes,
/// then removes ACLs `dst` inherited (if it could: `inherits`) that `src`
/// does not have. Returns whether an ACL was written.
fn copy_xattrs(src: Obj<'_>, dst: Obj<'_>, kind: FileType, inherits: bool) -> Result<bool> {
    let mut wrote_acl = false;
    // Only a filesystem without extended attributes has none to list; any
    // other failure (ENOSYS or EPERM from a policy) could hide an ACL.
    let names = match read_growing(|buf| list(src, buf)) {
        Ok(names) => names,
        Err(Errno::OPNOTSUPP) => Vec::new(),
        Err(e) => return Err(Error::copy_step(e, "list xattrs")),
    };
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty() && !never_copied(n)) {
        let cname = CString::new(name).expect("split on NUL");
        let value = match read_growing(|buf| get(src, &cname, buf)) {
            Ok(v) => v,
            Err(Errno::NODATA) => continue,                     // removed meanwhile
            Err(Errno::OPNOTSUPP) if !is_acl(name) => continue, // a kind that cannot be read
            Err(e) => return Err(Error::copy_step(e, "read xattr")),
        };
        match retry(|| set(dst, &cname, &value)) {
            Ok(()) => wrote_acl |= is_acl(name),
            Err(e) if skip_write(e, name, kind) => {}
            Err(e) => return Err(Error::copy_step(e, "write xattr")),
        }
    }
    for acl in inherited_acls(&names).filter(|_| inherits) {
        match retry(|| remove(dst, acl)) {
            // Absent, or a filesystem that has no such thing: nothing was inherited.
            Ok(()) | Err(Errno::NODATA | Errno::OPNOTSUPP) => {}
            // The removal is refused (a filesystem that keeps xattrs
            // read-only), but the copy has no such ACL: nothing to remove.
            Err(_) if !present(dst, acl) => {}
            Err(e) => return Err(Error::copy_step(e, "remove inherited ACL")),
        }
    }
    Ok(wrote_acl)
}

/// `/proc/thread-self/fd/<dir>/<name>`, for the `l*xattr` calls.
fn proc_path(dir: BorrowedFd<'_>, name: &CStr) -> CString {
    let mut p = format!("/proc/thread-self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name.to_bytes());
    CString::new(p).expect("no NUL")
}

/// A `l*xattr` call on a /proc path, where the `*xattrat` call is missing
/// (ENOSYS) or refused by a sandbox that does not know it yet (EPERM, as
/// older container profiles answer unknown calls): without /proc (ENOENT
/// there) the attributes cannot be reached: EXDEV.
fn no_proc<T>(r: rustix::io::Result<T>) -> rustix::io::Result<T> {
    match r {
        Err(Errno::NOENT) => Err(Errno::XDEV),
        other => other,
    }
}

fn list(obj: Obj<'_>, buf: &mut [u8]) -> rustix::io::Result<usize> {
    match obj {
        Obj::Fd(fd) => rustix::fs::flistxattr(fd, buf),
        Obj::At(dir, name) => match super::sys::listxattr_nofollow(dir, name, buf) {
            Err(Errno::NOSYS | Errno::PERM) => no_proc(rustix::fs::llistxattr(&*proc_path(dir, name), buf)),
            other => other,
        },
    }
}

fn get(obj: Obj<'_>, attr: &CStr, buf: &mut [u8]) -> rustix::io::Result<usize> {
    match obj {
        Obj::Fd(fd) => rustix::fs::fgetxattr(fd, attr, buf),
        Obj::At(dir, name) => match super::sys::getxattr_nofollow(dir, name, attr, buf) {
            Err(Errno::NOSYS | Errno::PERM) => no_proc(rustix::fs::lgetxattr(&*proc_path(dir, name), attr, buf)),
            other => other,
        },
    }
}

fn set(obj: Obj<'_>, attr: &CStr, value: &[u8]) -> rustix::io::Result<()> {
    match obj {
        Obj::Fd(fd) => rustix::fs::fsetxattr(fd, attr, value, XattrFlags::empty()),
        Obj::At(dir, name) => match super::sys::setxattr_nofollow(dir, name, attr, value) {
            Err(Errno::NOSYS | Errno::PERM) => {
                no_proc(rustix::fs::lsetxattr(&*proc_path(dir, name), attr, value, XattrFlags::empty()))
            }
            other => other,
        },
    }
}

fn remove(obj: Obj<'_>, attr: &CStr) -> rustix::io::Result<()> {
    match obj {
        Obj::Fd(fd) => rustix::fs::fremovexattr(fd, attr),
        Obj::At(dir, name) => match super::sys::removexattr_nofollow(dir, name, attr) {
            Err(Errno::NOSYS | Errno::PERM) => no_proc(rustix::fs::lremovexattr(&*proc_path(dir, name), attr)),
            other => other,
        },
    }
}

/// The ACLs a new object may have inherited from its directory's default
/// ACL but the source does not have: they must go, or the copy would grant
/// what the original did not (a rename keeps the inode, inherits nothing).
fn inherited_acls(source_names: &[u8]) -> impl Iterator<Item = &'static CStr> + '_ {
    [c"system.posix_acl_access", c"system.posix_acl_default"]
        .into_iter()
        .filter(move |acl| !source_names.split(|&b| b == 0).any(|n| n == acl.to_bytes()))
}

/// Whether `obj` has the attribute `attr`; when that cannot be told, yes.
fn present(obj: Obj<'_>, attr: &CStr) -> bool {
    !matches!(retry(|| get(obj, attr, &mut [0u8; 0][..])), Err(Errno::NODATA | Errno::OPNOTSUPP))
}

/// Calls an xattr read function with a growing buffer until it fits.
fn read_growing(mut f: impl FnMut(&mut [u8]) -> rustix::io::Result<usize>) -> rustix::io::Result<Vec<u8>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [FileType; 7] = [
        FileType::RegularFile,
        FileType::Directory,
        FileType::Symlink,
        FileType::Fifo,
        FileType::Socket,
        FileType::CharacterDevice,
        FileType::BlockDevice,
    ];

    #[test]
    fn an_attribute_the_destination_cannot_hold_is_skipped_for_every_object_type_alike() {
        for kind in KINDS {
            for name in [&b"user.a"[..], b"trusted.a", b"security.a"] {
                assert!(skip_write(Errno::OPNOTSUPP, name, kind), "{kind:?} {name:?}");
                // ENOSYS for a call every kernel has is a policy, not a filesystem.
                for fatal in [Errno::NOSYS, Errno::IO, Errno::NOSPC, Errno::DQUOT, Errno::INVAL, Errno::ROFS] {
                    assert!(!skip_write(fatal, name, kind), "{kind:?} {name:?} {fatal:?}");
                }
            }
            for name in [&b"trusted.a"[..], b"security.selinux"] {
                assert!(skip_write(Errno::PERM, name, kind) && skip_write(Errno::ACCESS, name, kind));
            }
            // An ACL that cannot be written is never skipped: the copy
            // would grant what the original did not.
            for acl in [&b"system.posix_acl_access"[..], b"system.posix_acl_default"] {
                for e in [Errno::OPNOTSUPP, Errno::NOSYS, Errno::PERM, Errno::ACCESS, Errno::INVAL] {
                    assert!(!skip_write(e, acl, kind), "{kind:?} {acl:?} {e:?}");
                }
            }
        }
    }

    #[test]
    fn user_attributes_are_refused_by_the_kernel_only_where_it_never_takes_them() {
        for kind in KINDS {
            let takes_user = matches!(kind, FileType::RegularFile | FileType::Directory);
            assert_eq!(skip_write(Errno::PERM, b"user.a", kind), !takes_user, "{kind:?}");
            assert!(!skip_write(Errno::ACCESS, b"user.a", kind), "{kind:?}");
        }
    }

    #[test]
    fn raw_xfs_acls_and_kernel_only_attributes_are_never_copied() {
        for name in [&b"trusted.SGI_ACL_FILE"[..], b"trusted.SGI_ACL_DEFAULT", b"security.evm", b"xfsroot.x"] {
            assert!(never_copied(name), "{}", String::from_utf8_lossy(name));
        }
        for name in [&b"system.posix_acl_access"[..], b"user.x", b"trusted.overlay.opaque", b"security.selinux"] {
            assert!(!never_copied(name), "{}", String::from_utf8_lossy(name));
        }
    }

    #[test]
    fn inherited_acls_are_those_the_source_lacks() {
        let none: Vec<_> = inherited_acls(b"user.x\0").collect();
        assert_eq!(none, [c"system.posix_acl_access", c"system.posix_acl_default"]);
        let one: Vec<_> = inherited_acls(b"system.posix_acl_access\0user.x\0").collect();
        assert_eq!(one, [c"system.posix_acl_default"]);
    }
}
