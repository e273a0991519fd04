//! Recreating a symlink or a special file (FIFO, character or block device,
//! socket): these have no data to copy, only what they are. Used by the
//! node mover and, inside trees, by the tree mover.

use std::ffi::CStr;
use std::os::fd::BorrowedFd;

use rustix::fs::{FileType, Mode, Statx};
use rustix::io::Errno;

use super::error::retry;
use super::stat::file_type;

/// Creates at `dst_dir`/`dst_name` a copy of the symlink or special file
/// `src_dir`/`src_name`, seen as `st`: `symlinkat` with the same target
/// text (dangling or not), `mknodat` with the same type and device number,
/// private (0600) until its metadata is applied. Fails with EEXIST if the
/// name is taken.
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
