//! Recreating a symlink or a special file (FIFO, character or block device,
//! socket): these have no data to copy, only what they are. Used by the
//! node mover and, inside trees, by the tree mover.

use std::ffi::CStr;
use std::os::fd::BorrowedFd;

use rustix::fs::{FileType, Mode, Statx};
use rustix::io::Errno;

use super::error::{Error, Result, retry};
use super::stat::file_type;

/// The step name of a move refused because a server listens on a socket
/// file of it.
pub const LISTENED_ON: &str = "a socket someone listens on";

/// Unix sockets bound to a name, listed once per move when the first
/// socket file is met.
#[derive(Default)]
pub struct Listening(std::cell::OnceCell<Vec<(u32, u32)>>);

impl Listening {
    /// Refuses (EXDEV) a socket file some process is bound to in this
    /// network namespace: the kernel's rename keeps the server reachable
    /// at the new name, but a copy is a new socket file no one listens on.
    /// A stale socket file (its server gone), one bound in another network
    /// namespace, or one whose sockets cannot be listed, is recreated, as
    /// `mv` does.
    /// `dir` is the socket file's directory.
    pub fn check(&self, st: &Statx, dir: BorrowedFd<'_>) -> Result<()> {
        if file_type(st) != FileType::Socket {
            return Ok(());
        }
        let bound = self.0.get_or_init(|| super::sys::bound_unix_sockets().unwrap_or_default());
        // The kernel's encoding of the device, and the inode's low 32 bits.
        let dev = (st.stx_dev_major << 20) | (st.stx_dev_minor & 0xfffff);
        let ino = st.stx_ino as u32;
        // The kernel names a socket by its filesystem's device, which statx
        // does not give on overlayfs (the layer's device) or btrfs (the
        // subvolume's): there the inode alone decides (a stale socket
        // sharing a bound one's number is refused: EXDEV).
        let listened = bound.contains(&(dev, ino)) || (bound.iter().any(|&(_, i)| i == ino) && own_device_hidden(dir));
        if listened {
            return Err(Error::new(Errno::XDEV, LISTENED_ON));
        }
        Ok(())
    }
}

/// Whether `dir` is on a filesystem whose files statx reports on another
/// device than the kernel's own (overlayfs: a layer's; btrfs: a
/// subvolume's), or whose type cannot be told.
fn own_device_hidden(dir: BorrowedFd<'_>) -> bool {
    const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;
    const BTRFS_SUPER_MAGIC: i64 = 0x9123_683e;
    // f_type's width differs between architectures.
    #[allow(clippy::unnecessary_cast)]
    let magic = |fs: rustix::fs::StatFs| fs.f_type as i64;
    rustix::fs::fstatfs(dir).map_or(true, |fs| matches!(magic(fs), OVERLAYFS_SUPER_MAGIC | BTRFS_SUPER_MAGIC))
}

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
