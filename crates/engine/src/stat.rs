//! `statx` helpers: what an object is, and which object it is.

use std::ffi::CStr;
use std::os::fd::BorrowedFd;

use rustix::fs::{AtFlags, FileType, Statx, StatxAttributes, StatxFlags};
use rustix::io::Errno;

use super::error::retry;

/// An inode's identity: device major, minor, inode number.
pub type Id = (u32, u32, u64);

/// The identity of a `statx` result.
pub fn id(st: &Statx) -> Id {
    (st.stx_dev_major, st.stx_dev_minor, st.stx_ino)
}

/// `statx` of `name` in `dir`, without following a final symlink.
pub fn lstat(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<Statx> {
    retry(|| rustix::fs::statx(dir, name, AtFlags::SYMLINK_NOFOLLOW, StatxFlags::BASIC_STATS))
}

/// `statx` of an open descriptor.
pub fn fstat(fd: BorrowedFd<'_>) -> rustix::io::Result<Statx> {
    retry(|| rustix::fs::statx(fd, c"", AtFlags::EMPTY_PATH, StatxFlags::BASIC_STATS))
}

/// The file type of a `statx` result.
pub fn file_type(st: &Statx) -> FileType {
    FileType::from_raw_mode(st.stx_mode.into())
}

/// Whether two `statx` results describe the same inode.
pub fn same_inode(a: &Statx, b: &Statx) -> bool {
    id(a) == id(b)
}

fn has(st: &Statx, attr: StatxAttributes) -> bool {
    st.stx_attributes_mask.contains(attr) && st.stx_attributes.contains(attr)
}

/// Whether the object is the root of a mount.
pub fn mount_root(st: &Statx) -> bool {
    has(st, StatxAttributes::MOUNT_ROOT)
}

/// Whether the object is append-only (`chattr +a`).
pub fn is_append_only(st: &Statx) -> bool {
    has(st, StatxAttributes::APPEND)
}

/// Whether the object is immutable or append-only: it cannot be removed.
pub fn locked(st: &Statx) -> bool {
    let locked = StatxAttributes::IMMUTABLE | StatxAttributes::APPEND;
    st.stx_attributes.intersects(locked & st.stx_attributes_mask)
}

/// Whether `dir` is an append-only directory: entries can be added, never
/// removed or renamed away, so no hidden temp may be made there.
pub fn append_only(dir: BorrowedFd<'_>) -> bool {
    fstat(dir).is_ok_and(|st| is_append_only(&st))
}

/// Lists `dir` from its current offset (`getdents64` into `buf`'s spare
/// capacity): calls `each` with the name, listed type (`d_type`, a hint)
/// and inode number (`d_ino`) of every entry but `.` and `..`, until it
/// returns false. A read interrupted by a signal is made again (it
/// consumed nothing).
pub fn list_dir(
    dir: BorrowedFd<'_>,
    buf: &mut Vec<u8>,
    mut each: impl FnMut(&CStr, FileType, u64) -> bool,
) -> rustix::io::Result<()> {
    let mut entries = rustix::fs::RawDir::new(dir, buf.spare_capacity_mut());
    while let Some(entry) = entries.next() {
        let entry = match entry {
            Err(Errno::INTR) => continue,
            other => other?,
        };
        let name = entry.file_name();
        if name != c"." && name != c".." && !each(name, entry.file_type(), entry.ino()) {
            break;
        }
    }
    Ok(())
}
