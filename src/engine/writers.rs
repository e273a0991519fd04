//! A regular file that some process holds open for writing is never copied
//! away from its writer.
//!
//! The kernel's rename keeps the inode: a writer holding a descriptor
//! (InnoDB's `.ibd` files, a log writer, SQLite) goes on writing into the
//! moved file. A copy cannot follow it: writes made after the copy would go
//! into the deleted source and be lost while rename said 0. So such a file
//! is not moved at all: the program gets the kernel's EXDEV back.
//!
//! How writers are seen, cheapest first:
//! 1. A read lease (`fcntl(F_SETLEASE, F_RDLCK)`, fcntl(2)) is refused with
//!    EAGAIN while any process, the caller included, has the file open for
//!    writing or mapped shared and writable: the kernel's own count of
//!    writers, system-wide, about 2 us a file. A lease break would signal
//!    the lease holder (SIGIO, whose default action kills), so the lease is
//!    never taken by the program: a short-lived child shares the program's
//!    memory and descriptor table (`CLONE_VM | CLONE_VFORK | CLONE_FILES`,
//!    as posix_spawn does), has every signal blocked, takes and drops the
//!    leases on the descriptors already open for the copy, and exits. It
//!    raises no SIGCHLD (exit signal 0) and is reaped with `__WCLONE`, so the
//!    program's own `wait` never sees it. Files are probed in batches, one
//!    child a batch.
//! 2. Where no lease can be taken (not the file's owner and no `CAP_LEASE`,
//!    a filesystem without leases, a child that cannot be made), `/proc` is
//!    read instead: every process's descriptors open for writing
//!    (`/proc/PID/fdinfo` flags, then the target from the cache) and shared
//!    writable mappings (`/proc/PID/maps`), once per move.
//! 3. If some process cannot be looked at (another user's, for a caller
//!    without the privilege; no `/proc`), a writer there would be invisible:
//!    the answer is unknown, and the move is refused (EXDEV): fail closed.
//!    So a caller who neither owns a file nor may read every process gets
//!    EXDEV for it.
//!
//! A writer that opens the file after this check is caught by the change
//! detection ([`seen`](super::seen)).

use std::collections::HashSet;
use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use rustix::fs::{AtFlags, Mode, OFlags, Statx, StatxFlags};
use rustix::io::Errno;

use super::error::{Error, Result, retry};
use super::walk::{open_dir, read_names};

/// The step name of a move refused because of a writer.
pub const OPEN_FOR_WRITING: &str = "open for writing";
/// The step name when writers could not be looked for.
pub const UNCHECKABLE: &str = "open for writing: cannot check (no lease, some process unreadable)";

/// What is known of a file's writers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    None,
    Present,
    Unknown,
}

/// Looks for writers of the files of one move; remembers the `/proc` scan.
#[derive(Debug, Default)]
pub struct Writers {
    /// `None`: not scanned yet; `Some(None)`: `/proc` cannot be read.
    scan: Option<Option<HashSet<(u32, u32, u64)>>>,
}

impl Writers {
    /// Fails with EXDEV if any of `files` (open read-only descriptors, with
    /// their stat) is open for writing anywhere, or if that cannot be told.
    pub fn check(&mut self, files: &[(BorrowedFd<'_>, &Statx)]) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let fds: Vec<i32> = files.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
        let answers = super::sys::lease_probe(&fds).into_iter().map(|r| match r {
            Some(0) => Answer::None,
            Some(libc::EAGAIN) => Answer::Present,
            _ => Answer::Unknown,
        });
        for ((_, st), answer) in files.iter().zip(answers) {
            let answer = match answer {
                Answer::Unknown => self.scanned(st),
                known => known,
            };
            match answer {
                Answer::None => {}
                Answer::Present => return Err(Error::new(Errno::XDEV, OPEN_FOR_WRITING)),
                Answer::Unknown => return Err(Error::new(Errno::XDEV, UNCHECKABLE)),
            }
        }
        Ok(())
    }

    fn scanned(&mut self, st: &Statx) -> Answer {
        let set = self.scan.get_or_insert_with(scan_proc);
        match set {
            None => Answer::Unknown,
            Some(set) if set.contains(&(st.stx_dev_major, st.stx_dev_minor, st.stx_ino)) => Answer::Present,
            Some(_) => Answer::None,
        }
    }
}

/// The identities of every file open for writing or mapped shared and
/// writable by any process. `None` when that cannot be told: `/proc` is
/// missing, or some process's descriptors cannot be read (another user's,
/// for a caller without the privilege): a writer there would be invisible,
/// so nothing can be proven (fail closed).
fn scan_proc() -> Option<HashSet<(u32, u32, u64)>> {
    let mut set = HashSet::new();
    let proc = open_dir(rustix::fs::CWD, c"/proc").ok()?;
    for name in read_names(proc.as_fd()).ok()? {
        if name.to_bytes().iter().all(u8::is_ascii_digit) {
            let mut path = b"/proc/".to_vec();
            path.extend_from_slice(name.to_bytes());
            let path = CString::new(path).expect("no NUL");
            match scan_process(&path, &mut set) {
                // Gone meanwhile: it writes nothing any more.
                Ok(()) | Err(Errno::NOENT | Errno::SRCH) => {}
                Err(_) => return None,
            }
        }
    }
    Some(set)
}

/// Adds what the process at `proc` writes to `set`. Only descriptors open
/// for writing (their `fdinfo` flags) are looked at, and their target is
/// stat'ed with `AT_STATX_DONT_SYNC`, from the cache: a stalled network or
/// FUSE filesystem that some process has a file open on must not hang the
/// program.
fn scan_process(proc: &std::ffi::CStr, set: &mut HashSet<(u32, u32, u64)>) -> rustix::io::Result<()> {
    let dir =
        rustix::fs::openat(rustix::fs::CWD, proc, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let fd_dir = open_dir(dir.as_fd(), c"fd")?;
    let fdinfo = open_dir(dir.as_fd(), c"fdinfo")?;
    let names = read_names(fd_dir.as_fd()).map_err(|e| e.errno)?;
    for n in names {
        match read_small(fdinfo.as_fd(), &n) {
            Ok(info) if writable_flags(&info) => {}
            Ok(_) | Err(Errno::NOENT) => continue, // read-only, or closed meanwhile
            Err(e) => return Err(e),
        }
        let flags = AtFlags::STATX_DONT_SYNC;
        let Ok(st) = retry(|| rustix::fs::statx(fd_dir.as_fd(), &*n, flags, StatxFlags::TYPE | StatxFlags::INO)) else {
            continue;
        };
        if u32::from(st.stx_mode) & libc::S_IFMT == libc::S_IFREG {
            set.insert((st.stx_dev_major, st.stx_dev_minor, st.stx_ino));
        }
    }
    let maps = read_small(dir.as_fd(), c"maps")?;
    for line in maps.split(|&b| b == b'\n') {
        if let Some(id) = shared_writable_mapping(line) {
            set.insert(id);
        }
    }
    Ok(())
}

fn read_small(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> rustix::io::Result<Vec<u8>> {
    let fd = retry(|| rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match retry(|| rustix::io::read(&fd, &mut buf))? {
            0 => return Ok(out),
            n => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether an fdinfo text says the descriptor is open for writing.
fn writable_flags(info: &[u8]) -> bool {
    info.split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"flags:"))
        .and_then(|v| u32::from_str_radix(std::str::from_utf8(v).ok()?.trim(), 8).ok())
        .is_some_and(|flags| flags & libc::O_ACCMODE as u32 != libc::O_RDONLY as u32)
}

/// `(dev major, dev minor, inode)` of a `/proc/PID/maps` line that maps a
/// file shared and writable (`rw-s`, `-w-s`).
fn shared_writable_mapping(line: &[u8]) -> Option<(u32, u32, u64)> {
    let line = std::str::from_utf8(line).ok()?;
    let mut f = line.split_ascii_whitespace();
    let (_range, perms, _off, dev, ino) = (f.next()?, f.next()?.as_bytes(), f.next()?, f.next()?, f.next()?);
    if perms.len() < 4 || perms[1] != b'w' || perms[3] != b's' {
        return None;
    }
    let (maj, min) = dev.split_once(':')?;
    let ino: u64 = ino.parse().ok()?;
    (ino != 0).then_some((u32::from_str_radix(maj, 16).ok()?, u32::from_str_radix(min, 16).ok()?, ino))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_flags_read_as_octal() {
        assert!(writable_flags(b"pos:\t0\nflags:\t0100002\nmnt_id:\t1\n"));
        assert!(writable_flags(b"flags:\t02000001\n"));
        assert!(!writable_flags(b"pos:\t0\nflags:\t0100000\n"));
        assert!(!writable_flags(b"pos:\t0\n"));
    }

    #[test]
    fn only_shared_writable_mappings_count() {
        let l = b"7f00-7f10 rw-s 00000000 00:2a 1234 /tmp/x";
        assert_eq!(shared_writable_mapping(l), Some((0, 0x2a, 1234)));
        assert_eq!(shared_writable_mapping(b"7f00-7f10 rw-p 00000000 08:01 99 /lib/x.so"), None);
        assert_eq!(shared_writable_mapping(b"7f00-7f10 r--s 00000000 08:01 99 /x"), None);
        assert_eq!(shared_writable_mapping(b"7f00-7f10 rw-s 00000000 00:01 0 /dev/zero"), None);
    }
}
