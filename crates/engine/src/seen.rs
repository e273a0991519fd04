//! Change detection: is a source entry still what was copied?
//!
//! Each entry is judged against what was recorded when its copy began (its
//! inode, size, mode, owner, mtime and ctime: [`Seen`]), never against the
//! copy, which cannot always hold what it is compared with (a filesystem
//! with 1-second or 2-second timestamps loses the nanoseconds).
//!
//! Timestamps prove nothing about changes made in the same clock tick as
//! the recording: a write of the same size a moment later may leave size,
//! mtime and ctime exactly as recorded. Git calls such index entries
//! "racy". So an entry whose mtime or ctime is not clearly older than the
//! start of its copy (by the filesystem's tick: 2 s where timestamps carry
//! no nanoseconds, as on ext2/3, ext4 with 128-byte inodes and FAT; 20 ms
//! elsewhere, the kernel's coarse clock lagging by up to a jiffy) is
//! *racy*, and its content is compared byte for byte with the copy before
//! it may be deleted ([`same_content`]).

use std::hash::{DefaultHasher, Hash, Hasher};
use std::os::fd::BorrowedFd;

use rustix::fs::{FileType, Statx};

use super::error::{At, Result, retry};
use super::stat::file_type;

/// A time as (seconds, nanoseconds) since the epoch.
pub type Stamp = (i64, u32);

/// The current wall-clock time, as file timestamps are taken: the kernel's
/// own clock (rustix reads the vDSO or makes the syscall itself), never a
/// libc `clock_gettime` that another preloaded library (libfaketime) may
/// shift, which would make every entry look older than it is.
pub fn now() -> Stamp {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    (t.tv_sec, t.tv_nsec as u32)
}

/// What an entry was when its copy began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    id: (u32, u32, u64),
    kind: FileType,
    size: u64,
    mode: u16,
    uid: u32,
    gid: u32,
    rdev: (u32, u32),
    mtime: Stamp,
    ctime: Stamp,
    nlink: u32,
    racy: bool,
}

impl Seen {
    /// Records `st`, taken after `started` (read before the stat).
    pub fn record(st: &Statx, started: Stamp) -> Seen {
        let mtime = (st.stx_mtime.tv_sec, st.stx_mtime.tv_nsec);
        let ctime = (st.stx_ctime.tv_sec, st.stx_ctime.tv_nsec);
        let coarse = st.stx_mtime.tv_nsec == 0 && st.stx_ctime.tv_nsec == 0 && st.stx_atime.tv_nsec == 0;
        let tick_ns: i128 = if coarse { 2_020_000_000 } else { 20_000_000 };
        let ns = |t: Stamp| i128::from(t.0) * 1_000_000_000 + i128::from(t.1);
        let racy = ns(mtime.max(ctime)) + tick_ns >= ns(started);
        Seen {
            id: (st.stx_dev_major, st.stx_dev_minor, st.stx_ino),
            kind: file_type(st),
            size: st.stx_size,
            mode: st.stx_mode,
            uid: st.stx_uid,
            gid: st.stx_gid,
            rdev: (st.stx_rdev_major, st.stx_rdev_minor),
            mtime,
            ctime,
            nlink: st.stx_nlink,
            racy,
        }
    }

    /// Whether both records are of the same inode.
    pub fn same_id(&self, other: &Seen) -> bool {
        self.id == other.id
    }

    /// Whether `now` is the same inode.
    pub fn same_inode(&self, now: &Statx) -> bool {
        self.id == (now.stx_dev_major, now.stx_dev_minor, now.stx_ino)
    }

    /// Whether `now` is the same inode, unchanged: contents (size, mtime),
    /// metadata (mode, owner, and ctime, which any change sets).
    pub fn unchanged(&self, now: &Statx) -> bool {
        self.unchanged_but_ctime(now) && self.ctime == (now.stx_ctime.tv_sec, now.stx_ctime.tv_nsec)
    }

    /// As [`unchanged`](Self::unchanged) without ctime, for an entry whose
    /// ctime xrename itself changed (renamed aside, another name unlinked).
    pub fn unchanged_but_ctime(&self, now: &Statx) -> bool {
        self.same_inode(now)
            && self.kind == file_type(now)
            && self.size == now.stx_size
            && self.mode == now.stx_mode
            && (self.uid, self.gid) == (now.stx_uid, now.stx_gid)
            && self.rdev == (now.stx_rdev_major, now.stx_rdev_minor)
            && self.mtime == (now.stx_mtime.tv_sec, now.stx_mtime.tv_nsec)
    }

    /// Whether `now` is the same inode with the same mode and owner (a
    /// directory, whose times its entries change).
    pub fn same_mode_and_owner(&self, now: &Statx) -> bool {
        self.same_inode(now) && self.mode == now.stx_mode && (self.uid, self.gid) == (now.stx_uid, now.stx_gid)
    }

    /// Whether timestamps cannot prove this entry unchanged: its content
    /// must be compared.
    pub fn racy(&self) -> bool {
        self.racy
    }

    /// The size then.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The type then.
    pub fn kind(&self) -> FileType {
        self.kind
    }

    /// The link count then.
    pub fn nlink(&self) -> u32 {
        self.nlink
    }

    /// A 64-bit digest for a compact record of many entries (a tree): all
    /// of [`unchanged`](Self::unchanged)'s fields, or with `with_ctime`
    /// false those of [`unchanged_but_ctime`](Self::unchanged_but_ctime).
    /// The lowest bit is the racy flag.
    pub fn digest(&self, with_ctime: bool) -> u64 {
        let mut h = DefaultHasher::new();
        (self.id, self.kind.as_raw_mode(), self.size, self.mode, self.uid, self.gid, self.rdev, self.mtime)
            .hash(&mut h);
        if with_ctime {
            self.ctime.hash(&mut h);
        }
        (h.finish() & !1) | u64::from(self.racy)
    }
}

/// Whether the regular files `a` and `b` hold the same `size` bytes.
/// A read that fails is tried again from the start, a few times: a
/// transient error must not make a file look changed.
pub fn same_content(a: BorrowedFd<'_>, b: BorrowedFd<'_>, size: u64) -> Result<bool> {
    let mut last = Ok(false);
    for _ in 0..super::error::TIDY_TRIES {
        last = compare(a, b, size);
        if last.is_ok() {
            break;
        }
    }
    last
}

const BUF: usize = 1 << 16;

/// Compares the first `size` bytes, data segment by data segment of `a`
/// (`SEEK_DATA`/`SEEK_HOLE`): where `a` has a hole, `b` must read zeros
/// there (checked on `b`'s own data only), so a sparse file of 1 GiB with
/// 1 MiB of data costs reading 2 MiB, not 2 GiB.
fn compare(a: BorrowedFd<'_>, b: BorrowedFd<'_>, size: u64) -> Result<bool> {
    // Holes are not read: the lengths are compared instead.
    for fd in [a, b] {
        if super::stat::fstat(fd).at("compare content")?.stx_size != size {
            return Ok(false);
        }
    }
    let (mut x, mut y) = (vec![0u8; BUF], vec![0u8; BUF]);
    let mut pos = 0u64;
    while pos < size {
        let data = next_data(a, pos, size)?;
        if data > pos {
            if !zeros(b, pos, data, &mut y)? {
                return Ok(false);
            }
            pos = data;
            continue;
        }
        let end = next_hole(a, pos, size)?;
        if !same_range(a, b, pos, end, &mut x, &mut y)? {
            return Ok(false);
        }
        pos = end;
    }
    // Neither has more.
    Ok(read_full(a, &mut x[..1], size)? == 0 && read_full(b, &mut y[..1], size)? == 0)
}

/// Where `fd` has data next at or after `pos` (`limit` if none before it);
/// a filesystem without `SEEK_DATA` has data everywhere.
fn next_data(fd: BorrowedFd<'_>, pos: u64, limit: u64) -> Result<u64> {
    match retry(|| rustix::fs::seek(fd, rustix::fs::SeekFrom::Data(pos))) {
        Ok(d) => Ok(d.min(limit)),
        Err(rustix::io::Errno::NXIO) => Ok(limit),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => Ok(pos),
        Err(e) => Err(super::Error::new(e, "compare content")),
    }
}

/// Where the data segment of `fd` at `pos` ends (at most `limit`).
fn next_hole(fd: BorrowedFd<'_>, pos: u64, limit: u64) -> Result<u64> {
    match retry(|| rustix::fs::seek(fd, rustix::fs::SeekFrom::Hole(pos))) {
        Ok(h) => Ok(h.clamp(pos + 1, limit)),
        Err(rustix::io::Errno::NXIO | rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => Ok(limit),
        Err(e) => Err(super::Error::new(e, "compare content")),
    }
}

/// Whether `fd` reads zeros from `from` to `to`.
fn zeros(fd: BorrowedFd<'_>, from: u64, to: u64, buf: &mut [u8]) -> Result<bool> {
    let mut pos = from;
    while pos < to {
        let data = next_data(fd, pos, to)?;
        if data >= to {
            break;
        }
        let end = next_hole(fd, data, to)?;
        let mut at = data;
        while at < end {
            let want = usize::try_from(end - at).unwrap_or(BUF).min(BUF);
            let n = read_full(fd, &mut buf[..want], at)?;
            if n != want || buf[..n].iter().any(|&c| c != 0) {
                return Ok(false);
            }
            at += want as u64;
        }
        pos = end;
    }
    Ok(true)
}

/// Whether `a` and `b` hold the same bytes from `from` to `to`.
fn same_range(a: BorrowedFd<'_>, b: BorrowedFd<'_>, from: u64, to: u64, x: &mut [u8], y: &mut [u8]) -> Result<bool> {
    let mut pos = from;
    while pos < to {
        let want = usize::try_from(to - pos).unwrap_or(BUF).min(BUF);
        let n = read_full(a, &mut x[..want], pos)?;
        let m = read_full(b, &mut y[..want], pos)?;
        if n != want || m != want || x[..n] != y[..m] {
            return Ok(false);
        }
        pos += want as u64;
    }
    Ok(true)
}

fn read_full(fd: BorrowedFd<'_>, buf: &mut [u8], at: u64) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        let n = retry(|| rustix::io::pread(fd, &mut buf[done..], at + done as u64)).at("compare content")?;
        if n == 0 {
            break;
        }
        done += n;
    }
    Ok(done)
}

/// Compact records of the entries of a copied tree, by identity (device
/// and inode, hashed: overlayfs reports one device for directories and
/// another for files): 16 bytes an entry, 8 more for the identity of its
/// copy, plus the link count of entries with several names. Two identities hashing alike can only make an
/// entry look changed, so kept: never deleted unseen.
#[derive(Debug, Default)]
pub struct Records {
    entries: Vec<(u64, u64)>,
    /// Identities of the entries made in the copy (sorted once sealed).
    copies: Vec<u64>,
    /// Entries with several links: digest without ctime, and link count.
    links: std::collections::HashMap<u64, (u64, u32)>,
    sorted: bool,
}

/// The key of an identity in [`Records`].
fn key(dev_major: u32, dev_minor: u32, ino: u64) -> u64 {
    let mut h = DefaultHasher::new();
    (dev_major, dev_minor, ino).hash(&mut h);
    h.finish()
}

impl Records {
    /// Records an entry (the first record of an inode wins).
    pub fn add(&mut self, seen: &Seen) {
        let k = key(seen.id.0, seen.id.1, seen.id.2);
        self.entries.push((k, seen.digest(true)));
        if seen.nlink > 1 && seen.kind != FileType::Directory {
            self.links.entry(k).or_insert((seen.digest(false), seen.nlink));
        }
        self.sorted = false;
    }

    /// Records an entry made in the copy, seen as `st`.
    pub fn add_copy(&mut self, st: &Statx) {
        self.add_copy_id((st.stx_dev_major, st.stx_dev_minor, st.stx_ino));
    }

    /// Records the identity of an entry made in the copy.
    pub fn add_copy_id(&mut self, id: (u32, u32, u64)) {
        self.copies.push(key(id.0, id.1, id.2));
        self.sorted = false;
    }

    /// Whether `st` is an entry xrename made in the copy.
    pub fn is_copy(&self, st: &Statx) -> bool {
        debug_assert!(self.sorted);
        self.copies.binary_search(&key(st.stx_dev_major, st.stx_dev_minor, st.stx_ino)).is_ok()
    }

    /// Sorts for lookups; call once all are added.
    pub fn seal(&mut self) {
        self.copies.sort_unstable();
        self.copies.dedup();
        self.entries.sort_by_key(|e| e.0);
        self.entries.dedup_by_key(|e| e.0);
        self.sorted = true;
    }

    /// Whether the inode of `now` had several names when it was copied.
    pub fn had_links(&self, now: &Statx) -> bool {
        self.links.contains_key(&key(now.stx_dev_major, now.stx_dev_minor, now.stx_ino))
    }

    /// The verdict on `now`, an entry of the source as it is now.
    pub fn judge(&self, now: &Statx, unlinked_names: u32) -> Verdict {
        debug_assert!(self.sorted);
        let k = key(now.stx_dev_major, now.stx_dev_minor, now.stx_ino);
        let Ok(i) = self.entries.binary_search_by_key(&k, |e| e.0) else {
            return Verdict::Unknown;
        };
        let recorded = self.entries[i].1;
        let then = Seen::record(now, (0, 0)); // racy flag from the record below
        let racy = recorded & 1 == 1;
        // Untouched (ctime included). Or xrename removed other names of it:
        // its ctime changed, and its link count by exactly that much (an
        // overlayfs lower-layer inode is not touched by those removals at
        // all: the first case).
        let same = (then.digest(true) & !1) == (recorded & !1)
            || (unlinked_names > 0
                && self.links.get(&k).is_some_and(|&(d, nlink)| {
                    (then.digest(false) & !1) == (d & !1) && now.stx_nlink + unlinked_names == nlink
                }));
        match (same, racy) {
            (false, _) => Verdict::Changed,
            (true, false) => Verdict::Unchanged,
            (true, true) => Verdict::Racy,
        }
    }
}

/// What a source entry is compared with its record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not recorded: it appeared during the move.
    Unknown,
    /// Changed since it was copied.
    Changed,
    /// The same, and its timestamps prove it.
    Unchanged,
    /// The same as far as timestamps tell, which is not enough: compare
    /// the content.
    Racy,
}

/// When a tree was installed: its root's ctime, which the rename into place
/// set, and the wall clock just after. Everything we copied into it is
/// older than the second; file timestamps come from a clock that may lag
/// one tick behind, so the first is not always a bound across inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since {
    /// The installed root's ctime.
    pub ctime: (i64, u32),
    /// The wall clock after the install.
    pub wall: (i64, u32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(mtime: Stamp, ctime: Stamp) -> Statx {
        // SAFETY-free: Statx is plain data; start from zero.
        let mut s: Statx = unsafe_free_zeroed();
        s.stx_mode = (libc::S_IFREG | 0o644) as u16;
        s.stx_mtime.tv_sec = mtime.0;
        s.stx_mtime.tv_nsec = mtime.1;
        s.stx_ctime.tv_sec = ctime.0;
        s.stx_ctime.tv_nsec = ctime.1;
        s.stx_atime.tv_nsec = mtime.1;
        s
    }

    fn unsafe_free_zeroed() -> Statx {
        // Statx has public fields only; Default is not derived, so copy a
        // real one and clear what matters.
        let mut s = rustix::fs::statx(rustix::fs::CWD, c"/", rustix::fs::AtFlags::empty(), rustix::fs::StatxFlags::ALL)
            .expect("statx /");
        s.stx_size = 0;
        s
    }

    #[test]
    fn old_entries_are_not_racy() {
        assert!(!Seen::record(&st((100, 5), (100, 5)), (200, 0)).racy());
    }

    #[test]
    fn entries_in_the_tick_of_the_copy_are_racy() {
        // nanosecond timestamps: within 20 ms
        assert!(Seen::record(&st((100, 990_000_000), (100, 990_000_000)), (101, 0)).racy());
        // a ctime change alone (chmod) counts too
        assert!(Seen::record(&st((50, 1), (100, 995_000_000)), (101, 0)).racy());
        // whole-second timestamps: anything within the 2-second tick
        assert!(Seen::record(&st((100, 0), (100, 0)), (101, 900_000_000)).racy());
        assert!(!Seen::record(&st((100, 0), (100, 0)), (103, 0)).racy());
    }

    #[test]
    fn any_field_change_is_a_change() {
        let a = st((100, 5), (100, 5));
        let seen = Seen::record(&a, (200, 0));
        assert!(seen.unchanged(&a));
        let mut b = a;
        b.stx_ctime.tv_nsec = 6;
        assert!(!seen.unchanged(&b) && seen.unchanged_but_ctime(&b));
        let mut c = a;
        c.stx_mode ^= 0o020;
        assert!(!seen.unchanged_but_ctime(&c));
        let mut d = a;
        d.stx_mtime.tv_sec = 101;
        assert!(!seen.unchanged_but_ctime(&d));
    }

    fn temp_file(name: &str, data: &[(u64, &[u8])], size: u64) -> std::fs::File {
        use std::os::unix::fs::FileExt;
        let path = std::env::temp_dir().join(format!("xrename-seen-{}-{name}", std::process::id()));
        let f = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f.set_len(size).unwrap();
        for (at, bytes) in data {
            f.write_all_at(bytes, *at).unwrap();
        }
        f
    }

    #[test]
    fn content_compare_follows_holes_and_sees_every_difference() {
        use std::os::fd::AsFd;
        const MIB: u64 = 1 << 20;
        let size = 64 * MIB;
        let a = temp_file("a", &[(3 * MIB, b"data"), (40 * MIB, b"more")], size);
        let same = temp_file("same", &[(3 * MIB, b"data"), (40 * MIB, b"more")], size);
        // Written zeros where `a` has a hole read the same.
        let zeros = temp_file("zeros", &[(3 * MIB, b"data"), (20 * MIB, &[0u8; 4096]), (40 * MIB, b"more")], size);
        let in_hole = temp_file("in-hole", &[(3 * MIB, b"data"), (20 * MIB, b"x"), (40 * MIB, b"more")], size);
        let in_data = temp_file("in-data", &[(3 * MIB, b"dbta"), (40 * MIB, b"more")], size);
        let shorter = temp_file("shorter", &[(3 * MIB, b"data"), (40 * MIB, b"more")], size - 1);
        let cmp = |b: &std::fs::File, n| same_content(a.as_fd(), b.as_fd(), n).unwrap();
        assert!(cmp(&same, size));
        assert!(cmp(&zeros, size));
        assert!(!cmp(&in_hole, size), "a byte in a hole of the source");
        assert!(!cmp(&in_data, size), "a byte in the data");
        assert!(!cmp(&shorter, size), "one byte shorter");
    }
}
