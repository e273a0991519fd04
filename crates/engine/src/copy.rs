//! Copying a regular file's data, holes included.
//!
//! Data segments are found with `SEEK_DATA`/`SEEK_HOLE` (lseek(2)), so a
//! sparse file stays sparse; the tail hole is made by `ftruncate`. Each
//! segment goes through the cheapest mechanism that works, falling back in
//! this order once per move: `copy_file_range` (in-kernel, reflinks where
//! the filesystem can; refused across filesystem types since Linux 5.19),
//! `sendfile`, then `pread`/`pwrite` through one buffer. Interrupted calls
//! and short transfers are resumed.
//!
//! The copy reads exactly the size seen when the source was opened: a file
//! that grows meanwhile is copied up to that size.

use super::report::Progress;
use std::os::fd::BorrowedFd;

use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, OwnedFd};

use rustix::fs::{FileType, Mode, OFlags, SeekFrom};
use rustix::io::Errno;

use super::durable::Durability;
use super::error::{At, Result, retry};

/// Largest request per call: big enough to amortise the syscall, small
/// enough to return to user space (signals, progress) now and then.
const CHUNK: usize = 64 << 20;
const BUF: usize = 1 << 17;

/// From this size on, the kernel is told the source is read sequentially.
const SEQUENTIAL_HINT: u64 = 1 << 20;

/// Opens the regular file `name` in `dir` to be copied: read-only, never
/// following a symlink, non-blocking (the name may hold a FIFO by now),
/// and with `O_NOATIME` where allowed (its owner, `CAP_FOWNER`), so that
/// the file's other names keep their atime, as a rename would.
///
/// A file another process holds a write lease on (Samba oplocks, NFS
/// delegations) answers a non-blocking open with EAGAIN while the lease
/// break it started is pending: then it is opened again without
/// O_NONBLOCK, which waits for the holder to let go, as mv's open does.
/// That second open goes through an `O_PATH` descriptor checked to be a
/// regular file (`/proc/thread-self/fd/N`), so it can never hang on a FIFO
/// put at the name meanwhile.
pub fn open_source(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY;
    let fd = match retry(|| rustix::fs::openat(dir, name, flags | OFlags::NOATIME, Mode::empty())) {
        Err(Errno::PERM) => retry(|| rustix::fs::openat(dir, name, flags, Mode::empty())),
        other => other,
    };
    let fd = match fd {
        Err(Errno::AGAIN) => open_leased(dir, name)?,
        other => other?,
    };
    // O_NONBLOCK stays: it changes nothing for the reads of a regular file
    // (an EAGAIN from the copy calls is retried), and clearing it would cost
    // two more syscalls a file.
    Ok(fd)
}

/// Opens a leased regular file, waiting for the lease holder (see
/// [`open_source`]).
fn open_leased(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<OwnedFd> {
    use std::os::fd::AsRawFd;
    let path =
        retry(|| rustix::fs::openat(dir, name, OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty()))?;
    let st = retry(|| rustix::fs::fstat(&path))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(Errno::AGAIN);
    }
    let proc = std::ffi::CString::new(format!("/proc/thread-self/fd/{}", path.as_raw_fd())).expect("no NUL");
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY;
    match retry(|| rustix::fs::open(&*proc, flags | OFlags::NOATIME, Mode::empty())) {
        Err(Errno::PERM) => retry(|| rustix::fs::open(&*proc, flags, Mode::empty())),
        Err(Errno::NOENT) => Err(Errno::AGAIN), // no /proc: the kernel's EXDEV
        other => other,
    }
}

/// What a mover needs besides the objects: how durable to make the copy,
/// where to count its progress, which files never to open, and what holds
/// for the whole move (the data route; whether new objects can inherit an
/// ACL from the destination directory).
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// fsync, syncfs and early writeback, or none.
    pub durability: Durability,
    /// Bytes and objects so far, for a display elsewhere.
    pub progress: Option<&'a dyn Progress>,
    /// Files the program holds a lease on.
    pub leases: &'a OwnLeases,
    /// How data goes between the two filesystems.
    pub route: &'a Route,
    /// Whether the destination directory has a default ACL that new
    /// objects inherit ([`meta::may_inherit`](super::meta::may_inherit)).
    pub inherits: bool,
    /// Most threads a tree copy may use, the caller's included (`None`:
    /// as many as [`pool::workers_for_tree`](super::pool::workers_for_tree) finds).
    pub threads: Option<usize>,
}

/// The inodes the program holds a lease on or (for the process itself) a
/// POSIX record lock on, read once per move. Opening a leased file, even
/// to read it and even non-blocking, starts a break of the program's own
/// lease (SIGIO to it, its lease downgraded), and closing any descriptor of
/// a file drops every record lock the process holds on it; the kernel's
/// rename does neither: such a file is not opened at all (EXDEV). Matched
/// by inode number alone (btrfs and overlayfs show another device there
/// than `stat` does): a false match only gives EXDEV.
///
/// A record lock, and a lease the program works with, belong to a file it
/// has open, and `/proc/PID/fdinfo/FD` lists those of each descriptor:
/// read there for each file among up to [`FDINFO_MOST`] descriptors
/// (not for sockets, pipes and anonymous inodes, which hold neither: an
/// inotify instance's fdinfo lists every watch). `/proc/locks` only for
/// more, or where fdinfo cannot be read: reading it takes the kernel's
/// lock table for writing, which waits for an RCU grace period (5-12 ms
/// for a move in a fresh process, measured on Linux 6.18) and makes every
/// lock call on the machine wait while it reads.
///
/// What no descriptor of the table shows is not seen (README, Known
/// limits): a lease kept only by a mapping, an io_uring registered file, a
/// descriptor in flight over a socket, or a thread that unshared its
/// table. A descriptor gone between the listing and its reading may have
/// been renumbered with its lease: `/proc/locks` then.
#[derive(Debug, Default, Clone)]
pub struct OwnLeases(Vec<u64>);

/// Most descriptors whose `fdinfo` is read one by one (about 8 us each);
/// with more, `/proc/locks` is read once instead.
pub const FDINFO_MOST: usize = 64;

impl OwnLeases {
    /// This process's, as the calling thread's descriptor table holds them
    /// (the table whose closes would drop the record locks); none if
    /// `/proc` cannot be read.
    pub fn read() -> OwnLeases {
        match rustix::fs::readlinkat(rustix::fs::CWD, c"/proc/self", Vec::new()) {
            Ok(me) => OwnLeases::held(c"/proc/thread-self/fdinfo", me.to_bytes(), true),
            Err(_) => OwnLeases::default(),
        }
    }

    /// The leases of thread `tid` (as this process's `/proc` numbers it):
    /// for a supervisor that moves on another process's behalf. Its
    /// record locks are its own process's: a helper's closes cannot drop
    /// them.
    pub fn of(tid: u32, tgid: u32) -> OwnLeases {
        let Ok(path) = CString::new(format!("/proc/{tid}/fdinfo")) else { return OwnLeases::default() };
        OwnLeases::held(&path, tgid.to_string().as_bytes(), false)
    }

    /// From `fdinfo` (a `/proc/PID/fdinfo` directory); from `/proc/locks`
    /// with the pid `me` where that directory has too many descriptors or
    /// cannot be read (a sandbox refusing it), or where one of its files
    /// cannot (a descriptor closed or renumbered meanwhile).
    fn held(fdinfo: &CStr, me: &[u8], record_locks: bool) -> OwnLeases {
        let from_locks = || OwnLeases::held_by(me, record_locks);
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let Ok(dir) = retry(|| rustix::fs::open(fdinfo, flags, Mode::empty())) else { return from_locks() };
        let names = match descriptors(dir.as_fd(), FDINFO_MOST + 1) {
            Ok(names) if names.len() <= FDINFO_MOST => names,
            _ => return from_locks(),
        };
        let mut inodes = Vec::new();
        for name in names {
            // What the descriptor is, as its link in `fd` beside `fdinfo`
            // names it (the filesystem is not asked: a hung server cannot
            // hold this up). Gone since the listing (ENOENT): closed, or
            // moved to another number (dup2 and close) with its lease:
            // nothing can tell which.
            let mut link = b"../fd/".to_vec();
            link.extend_from_slice(name.to_bytes());
            let Ok(link) = CString::new(link) else { continue };
            let Ok(target) = retry(|| rustix::fs::readlinkat(&dir, &link, Vec::new())) else { return from_locks() };
            let target = target.to_bytes();
            if [&b"anon_inode:"[..], b"socket:", b"pipe:"].iter().any(|kind| target.starts_with(kind)) {
                continue;
            }
            let Ok(text) = read_small(dir.as_fd(), &name) else { return from_locks() };
            // Each lock of the descriptor, as /proc/locks shows it, with the
            // pid of who set it: a lease a parent set on a file the program
            // inherited is the parent's, which the open waits for (a record
            // lock shown here is of this table, so set by this process).
            let locks = text.split(|&b| b == b'\n').filter_map(|line| line.strip_prefix(b"lock:\t"));
            inodes.extend(locks.filter_map(|line| holder(line, me, record_locks)));
        }
        OwnLeases(inodes)
    }

    /// From `/proc/locks`: the ones process `me` (as that `/proc` numbers
    /// it) holds.
    fn held_by(me: &[u8], record_locks: bool) -> OwnLeases {
        let Ok(text) = read_small(rustix::fs::CWD, c"/proc/locks") else {
            return OwnLeases::default();
        };
        OwnLeases(text.split(|&b| b == b'\n').filter_map(|line| holder(line, me, record_locks)).collect())
    }

    /// Whether the program holds no lease at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the program may hold a lease on the inode `ino`.
    pub fn holds(&self, ino: u64) -> bool {
        self.0.contains(&ino)
    }
}

/// The inode a line of `/proc/locks` (`N: LEASE ACTIVE|BREAKING TYPE PID
/// MAJ:MIN:INO ...`) names, if it is a lease or (`record_locks`) a POSIX
/// record lock, held by process `me`. "BREAKER" entries
/// are openers waiting, not holders; "->" lines are waiters. OFD locks and
/// flock belong to an open file: our closes leave them alone.
fn holder(line: &[u8], me: &[u8], record_locks: bool) -> Option<u64> {
    let f: Vec<&[u8]> = line.split(|&b| b == b' ').filter(|w| !w.is_empty()).collect();
    let lease = f.get(1) == Some(&&b"LEASE"[..]) && f.get(2) != Some(&&b"BREAKER"[..]);
    let holds = lease || (record_locks && f.get(1) == Some(&&b"POSIX"[..]));
    if !holds || f.get(4) != Some(&me) {
        return None;
    }
    std::str::from_utf8(f.get(5)?.rsplit(|&b| b == b':').next()?).ok()?.parse().ok()
}

/// The names in a `/proc/PID/fdinfo` directory (descriptor numbers), at
/// most `most` of them (the listing of a big table is not read whole).
fn descriptors(dir: BorrowedFd<'_>, most: usize) -> rustix::io::Result<Vec<CString>> {
    let mut buf = Vec::with_capacity(8 << 10);
    let mut names = Vec::new();
    super::stat::list_dir(dir, &mut buf, |name, _, _| {
        if name.to_bytes().first().is_some_and(u8::is_ascii_digit) {
            names.push(name.to_owned());
        }
        names.len() < most
    })?;
    Ok(names)
}

/// The whole of a small file (in `/proc`).
fn read_small(dir: BorrowedFd<'_>, name: &CStr) -> rustix::io::Result<Vec<u8>> {
    let fd = retry(|| rustix::fs::openat(dir, name, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()))?;
    // In few reads: each read of /proc/locks takes the lock table again.
    let mut buf = vec![0u8; 16 << 10];
    let mut text = Vec::new();
    loop {
        match retry(|| rustix::io::read(&fd, &mut buf))? {
            0 => return Ok(text),
            n => text.extend_from_slice(&buf[..n]),
        }
    }
}

/// The largest file this process may write (`RLIMIT_FSIZE`), if limited.
pub fn size_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Fsize).current
}

/// Refuses a copy of `size` bytes over the process's file size limit before
/// a byte is written: writing past it raises SIGXFSZ, which kills a program
/// that does not ignore it, or fails with EFBIG, which rename never returns.
pub fn within_limit(size: u64, limit: Option<u64>) -> Result<()> {
    match limit {
        Some(limit) if size > limit => Err(super::Error::new(Errno::XDEV, "over the file size limit (RLIMIT_FSIZE)")),
        _ => Ok(()),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    CopyFileRange,
    Sendfile,
    ReadWrite,
}

/// The way data goes between the two filesystems of one move, found with
/// its first file and kept for the others: a `copy_file_range` that fails
/// with EXDEV for one file fails for all of them. Only ever falls back
/// (`copy_file_range`, then `sendfile`, then `read`/`write`).
#[derive(Debug, Default)]
pub struct Route(std::sync::atomic::AtomicU8);

impl Route {
    fn get(&self) -> Method {
        match self.0.load(std::sync::atomic::Ordering::Relaxed) {
            0 => Method::CopyFileRange,
            1 => Method::Sendfile,
            _ => Method::ReadWrite,
        }
    }

    fn fell_back(&self, to: Method) {
        let v = match to {
            Method::CopyFileRange => 0,
            Method::Sendfile => 1,
            Method::ReadWrite => 2,
        };
        self.0.fetch_max(v, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Whether a file may have holes, from its status alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holes {
    /// None possible: at most one block, and it is allocated.
    None,
    /// Fewer blocks than the size needs: holes (or compression): looked for
    /// with `SEEK_DATA`/`SEEK_HOLE`.
    Likely,
    /// Enough blocks, but blocks are no proof (space reserved past the end
    /// with `fallocate`, an external xattr block): one `SEEK_HOLE` tells.
    Unknown,
}

/// What `st` says of a file's holes. A small file (nearly every file of a
/// tree) is copied as one range, without any seek.
pub fn holes(st: &rustix::fs::Statx) -> Holes {
    let blocks = st.stx_blocks.saturating_mul(512);
    if blocks < st.stx_size {
        Holes::Likely
    } else if st.stx_size <= u64::from(st.stx_blksize.max(512)) {
        Holes::None
    } else {
        Holes::Unknown
    }
}

/// Copies the first `size` bytes of `src` into the empty file `dst`,
/// keeping holes. Adds the bytes transferred to `copied`, and to `progress`
/// as they go. With `early_writeback` (the copy is about to be fsynced, and
/// is big: [`Durability::early_writeback`]), each chunk's writeback starts
/// as soon as it is written.
pub fn copy_data(
    src: BorrowedFd<'_>,
    dst: BorrowedFd<'_>,
    st: &rustix::fs::Statx,
    route: &Route,
    copied: &mut u64,
    progress: Option<&dyn Progress>,
    early_writeback: Option<Durability>,
) -> Result<()> {
    let size = st.stx_size;
    if size >= SEQUENTIAL_HINT {
        // Read-ahead for a big file; advice only, so a refusal changes nothing.
        let _ = rustix::fs::fadvise(src, 0, None, rustix::fs::Advice::Sequential);
    }
    let mut copier =
        Copier { src, dst, route, buf: Vec::new(), progress, agains: 0, early_writeback, dst_offset: Some(0) };
    let no_holes = match holes(st) {
        Holes::None => true,
        Holes::Likely => false,
        Holes::Unknown => match retry(|| rustix::fs::seek(src, SeekFrom::Hole(0))) {
            Ok(h) => h >= size,
            Err(Errno::INVAL | Errno::OPNOTSUPP) => true, // no hole support
            Err(_) => false,                              // the careful way below
        },
    };
    if no_holes {
        // No holes to keep: one range.
        let done = copier.range(0, size, copied)?;
        return set_size(dst, done.min(size), size);
    }
    let (mut pos, mut written) = (0, 0);
    while pos < size {
        let data = match retry(|| rustix::fs::seek(src, SeekFrom::Data(pos))) {
            Ok(d) => d,
            Err(Errno::NXIO) => break, // only a hole remains
            // No hole support: the rest is data.
            Err(Errno::INVAL | Errno::OPNOTSUPP) => pos,
            Err(e) => return Err(super::Error::read_step(e, "seek data")),
        };
        if data >= size {
            break;
        }
        let hole = match retry(|| rustix::fs::seek(src, SeekFrom::Hole(data))) {
            Ok(h) => h.min(size),
            Err(Errno::INVAL | Errno::OPNOTSUPP) => size,
            Err(e) => return Err(super::Error::read_step(e, "seek hole")),
        };
        let done = copier.range(data, hole - data, copied)?;
        if done < hole - data {
            break; // the source shrank: copy what is there
        }
        pos = hole;
        written = hole;
    }
    set_size(dst, written, size)
}

/// Gives the copy its size when it ends in a hole (`written` bytes of data
/// were placed up to there). Nothing to do when the data reached the end:
/// no `ftruncate`, which a sandbox may refuse (Landlock's TRUNCATE right,
/// for a file we created ourselves). Where it is refused, a zero byte
/// written at the last offset gives the same size (one block allocated).
fn set_size(dst: BorrowedFd<'_>, written: u64, size: u64) -> Result<()> {
    if written >= size {
        return Ok(());
    }
    match retry(|| rustix::fs::ftruncate(dst, size)) {
        Ok(()) => Ok(()),
        Err(Errno::ACCESS | Errno::PERM) => {
            let n = retry(|| rustix::io::pwrite(dst, &[0], size - 1)).at_copy("set size")?;
            if n == 1 { Ok(()) } else { Err(super::Error::copy_step(Errno::NOSPC, "set size")) }
        }
        Err(e) => Err(super::Error::copy_step(e, "set size")),
    }
}

struct Copier<'a> {
    src: BorrowedFd<'a>,
    dst: BorrowedFd<'a>,
    route: &'a Route,
    /// The file offset of `dst` where known (sendfile writes there).
    dst_offset: Option<u64>,
    buf: Vec<u8>,
    progress: Option<&'a dyn Progress>,
    /// EAGAIN answers so far: retried, but not forever.
    agains: u32,
    /// Start writeback of each chunk as it is copied (the copy will be fsynced).
    early_writeback: Option<Durability>,
}

impl Copier<'_> {
    /// Copies `len` bytes at offset `off` to the same offset; returns how
    /// many were copied (fewer only at end of file).
    fn range(&mut self, off: u64, len: u64, copied: &mut u64) -> Result<u64> {
        let mut done = 0;
        while done < len {
            let mut want = usize::try_from(len - done).unwrap_or(CHUNK).min(CHUNK);
            if self.early_writeback.is_some() {
                want = want.min(super::durable::WRITEBACK_CHUNK as usize);
            }
            let at = off + done;
            let n = match self.route.get() {
                Method::CopyFileRange => {
                    let (mut i, mut o) = (at, at);
                    match rustix::fs::copy_file_range(self.src, Some(&mut i), self.dst, Some(&mut o), want) {
                        Ok(n) => n,
                        Err(Errno::INTR) => continue,
                        Err(Errno::AGAIN) if self.again() => continue,
                        // Not across these filesystems, or refused by a
                        // seccomp policy: the next method.
                        Err(
                            Errno::XDEV
                            | Errno::INVAL
                            | Errno::OPNOTSUPP
                            | Errno::NOSYS
                            | Errno::BADF
                            | Errno::PERM
                            | Errno::ACCESS,
                        ) if done == 0 => {
                            self.route.fell_back(Method::Sendfile);
                            continue;
                        }
                        Err(Errno::AGAIN) => return Err(super::Error::new(Errno::XDEV, "copy: source stays busy")),
                        Err(e) => return Err(super::Error::copy_step(e, "copy_file_range")),
                    }
                }
                Method::Sendfile => {
                    if self.dst_offset != Some(at) {
                        retry(|| rustix::fs::seek(self.dst, SeekFrom::Start(at))).at_copy("seek destination")?;
                        self.dst_offset = Some(at);
                    }
                    let mut i = at;
                    match rustix::fs::sendfile(self.dst, self.src, Some(&mut i), want) {
                        Ok(n) => {
                            self.dst_offset = Some(at + n as u64);
                            n
                        }
                        Err(Errno::INTR) => continue,
                        Err(Errno::AGAIN) if self.again() => continue,
                        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP | Errno::PERM | Errno::ACCESS)
                            if done == 0 =>
                        {
                            self.route.fell_back(Method::ReadWrite);
                            continue;
                        }
                        Err(Errno::AGAIN) => return Err(super::Error::new(Errno::XDEV, "copy: source stays busy")),
                        Err(e) => return Err(super::Error::copy_step(e, "sendfile")),
                    }
                }
                Method::ReadWrite => self.read_write(at, want)?,
            };
            if n == 0 {
                break;
            }
            if let Some(durability) = self.early_writeback {
                durability.start_writeback(self.dst, at, n as u64);
                // What was written back a window ago must be on disk now.
                let end = at + n as u64;
                if let Some(behind) = end.checked_sub(super::durable::WINDOW + n as u64) {
                    durability.wait_writeback(self.dst, behind, n as u64)?;
                }
            }
            done += n as u64;
            *copied += n as u64;
            if let Some(p) = self.progress {
                p.bytes(n as u64);
            }
        }
        Ok(done)
    }

    /// Whether an EAGAIN may be retried (a lease break, say), up to a limit;
    /// past it the copy fails (and the move gives the kernel's EXDEV back).
    fn again(&mut self) -> bool {
        self.agains += 1;
        if self.agains > 1 {
            std::thread::yield_now();
        }
        self.agains <= 1000
    }

    fn read_write(&mut self, at: u64, want: usize) -> Result<usize> {
        if self.buf.is_empty() {
            self.buf = vec![0; BUF];
        }
        let want = want.min(self.buf.len());
        let n = retry(|| rustix::io::pread(self.src, &mut self.buf[..want], at)).at_read("read")?;
        let mut written = 0;
        while written < n {
            let w =
                retry(|| rustix::io::pwrite(self.dst, &self.buf[written..n], at + written as u64)).at_copy("write")?;
            if w == 0 {
                return Err(super::Error::new(Errno::NOSPC, "write"));
            }
            written += w;
        }
        Ok(n)
    }
}
