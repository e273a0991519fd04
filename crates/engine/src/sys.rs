//! The engine's few calls that neither rustix nor std offers safely: the
//! only `unsafe` code of the engine, each block with its reason.
#![allow(unsafe_code)]

use core::ffi::{c_int, c_uint, c_void};

/// This thread's filesystem uid, which permission checks use.
pub(crate) fn fsuid() -> u32 {
    // SAFETY: setfsuid with an invalid uid changes nothing and returns the
    // current filesystem uid (setfsuid(2)).
    unsafe { libc::setfsuid(u32::MAX) as u32 }
}

struct Job {
    fds: *const c_int,
    out: *mut c_int,
    len: usize,
}

const STACK: usize = 64 << 10;

/// Runs in the child: its stack is ours, its signals all blocked.
extern "C" fn child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` points at the parent's `Job`, alive and untouched
    // while the parent is suspended (CLONE_VFORK) until we exit.
    let job = unsafe { &*(arg as *const Job) };
    no_core();
    for i in 0..job.len {
        // SAFETY: `i < len`, the length of both arrays.
        let fd = unsafe { *job.fds.add(i) };
        // SAFETY: as above.
        unsafe { *job.out.add(i) = lease_once(fd) };
    }
    0
}

/// What the probe that opens files itself is given ([`lease_probe_names`]).
struct NamesJob {
    dirs: *const c_int,
    names: *const *const libc::c_char,
    /// Per entry: the answer (>= 0), or minus the errno of its open.
    out: *mut c_int,
    /// Per entry: the descriptor while it is open, else -1.
    fds: *mut c_int,
    len: usize,
    /// Most descriptors open at once.
    hold: usize,
}

/// Most descriptors the probe that opens files keeps open at once.
pub(crate) const HOLD_MOST: usize = 64;

/// Runs in the child: opens each name in its directory as the copy opens
/// a source file (read-only, never following a symlink, non-blocking, no
/// controlling tty, without touching its atime where allowed), asks for a
/// read lease and drops it, and closes the files in runs of consecutive
/// numbers; stops at the first open that fails (the caller takes it from
/// there).
extern "C" fn names_child(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` points at the parent's `NamesJob`, alive and untouched
    // while the parent is suspended (CLONE_VFORK) until we exit.
    let job = unsafe { &*(arg as *const NamesJob) };
    no_core();
    let hold = job.hold.clamp(1, HOLD_MOST);
    let mut held = [0 as c_int; HOLD_MOST];
    let mut n = 0;
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY;
    for i in 0..job.len {
        // SAFETY: `i < len`, the length of every array of the job; each
        // name is a C string the parent keeps.
        let (dir, name) = unsafe { (*job.dirs.add(i), *job.names.add(i)) };
        // SAFETY: openat with a C string and flags; the descriptor lands
        // in the shared table and is recorded at once (below).
        let mut fd = unsafe { libc::openat(dir, name, flags | libc::O_NOATIME) };
        if fd < 0 && errno() == libc::EPERM {
            // SAFETY: as above, without O_NOATIME (not the file's owner).
            fd = unsafe { libc::openat(dir, name, flags) };
        }
        if fd < 0 {
            // SAFETY: `i < len`.
            unsafe { *job.out.add(i) = -errno() };
            break;
        }
        // SAFETY: `i < len`. Recorded before anything else can happen, so
        // that a parent that finds this child killed closes it.
        unsafe { *job.fds.add(i) = fd };
        // SAFETY: `i < len`.
        unsafe { *job.out.add(i) = lease_once(fd) };
        held[n] = i as c_int;
        n += 1;
        if n == hold {
            close_held(job, &mut held[..n]);
            n = 0;
        }
    }
    close_held(job, &mut held[..n]);
    0
}

/// In the child: closes the descriptors of the entries `held` (indexes),
/// each run of consecutive numbers with one `close_range`; the entries of
/// a run are marked closed just before it is closed (a child killed in
/// between leaks that run rather than have the parent close numbers
/// someone else may have been given since).
fn close_held(job: &NamesJob, held: &mut [c_int]) {
    // SAFETY: every index in `held` is below `len`.
    let fd_of = |i: c_int| unsafe { *job.fds.add(i as usize) };
    held.sort_unstable_by_key(|&i| fd_of(i));
    for run in held.chunk_by(|&a, &b| fd_of(b) == fd_of(a) + 1) {
        let (first, last) = (fd_of(run[0]), fd_of(run[run.len() - 1]));
        for &i in run {
            // SAFETY: `i < len`.
            unsafe { *job.fds.add(i as usize) = -1 };
        }
        // SAFETY: every descriptor from `first` to `last` was opened by
        // this child and is closed once.
        let closed =
            run.len() > 1 && unsafe { libc::syscall(libc::SYS_close_range, first as c_uint, last as c_uint, 0) } == 0;
        if !closed {
            for fd in first..=last {
                // SAFETY: as above, one at a time.
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// In the child: a read lease on `fd`, dropped at once: 0 if granted,
/// else the errno.
fn lease_once(fd: c_int) -> c_int {
    // SAFETY: fcntl on a descriptor of the shared table; a lease taken
    // here is dropped at once, so that no fork of the program can inherit
    // it, and no writer ever waits for it.
    unsafe {
        if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0 {
            libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK);
            0
        } else {
            errno()
        }
    }
}

/// In the child: no core dump. A child trapped by a seccomp filter
/// (SIGSYS) would dump the program's whole memory, shared with it, as a
/// core file: never. Limits are per process, and this one is ours alone.
fn no_core() {
    let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: prlimit64 on this process (pid 0) with a valid new limit.
    unsafe { libc::syscall(libc::SYS_prlimit64, 0, libc::RLIMIT_CORE, &no_core as *const libc::rlimit, 0usize) };
}

/// The lease probe's child stack: a mapping, not an allocation, so that a
/// mapping refused under a tight RLIMIT_AS is an answer ("unknown", so
/// EXDEV), where a failed allocation would abort the program in the middle
/// of its move. Made once per move and reused by every probe of a tree
/// (unmapping memory a child on another CPU touched costs a TLB shootdown).
pub(crate) struct ProbeStack(*mut c_void);

impl ProbeStack {
    /// Maps the stack; `None` if the mapping is refused.
    pub(crate) fn new() -> Option<ProbeStack> {
        // SAFETY: a fresh private anonymous mapping, unmapped on drop.
        let stack = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                STACK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        (stack != libc::MAP_FAILED).then_some(ProbeStack(stack))
    }
}

impl Drop for ProbeStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; no child uses it any more
        // (each probe waits for its child to exit).
        unsafe { libc::munmap(self.0, STACK) };
    }
}

/// Asks for a read lease on each descriptor (see
/// the `writers` module), from a child running on `stack`, sharing the
/// caller's descriptor table: for each, `Some(0)` if one was granted (and
/// dropped at once), `Some(errno)` if refused, `None` if the probe could
/// not run.
pub(crate) fn lease_probe(stack: &ProbeStack, fds: &[c_int]) -> Vec<Option<c_int>> {
    let unknown = || vec![None; fds.len()];
    let mut out = vec![-1 as c_int; fds.len()];
    let job = Job { fds: fds.as_ptr(), out: out.as_mut_ptr(), len: fds.len() };
    let saved_errno = errno();
    // SAFETY: `child` only reads `job` and writes `out`, both alive until
    // `in_child` returns.
    let ran = unsafe { in_child(stack, child, &job as *const Job as *mut c_void) };
    let answers = if ran == Ran::Exited { out.iter().map(|&r| (r >= 0).then_some(r)).collect() } else { unknown() };
    set_errno(saved_errno);
    answers
}

/// What became of one entry of [`lease_probe_names`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Probed {
    /// Opened and probed: 0 if a lease was granted (and dropped), else the
    /// errno that refused it.
    Lease(c_int),
    /// Its open failed with this errno; the probe stopped there.
    Open(c_int),
    /// Not reached (after an open that failed).
    NotReached,
}

/// As [`lease_probe`], but the child opens each of `names` in its
/// directory of `dirs` itself (as the copy opens a source file), keeping
/// at most `hold` open at once: one child for many files, without their
/// descriptors held meanwhile. `None` if the probe could not run.
pub(crate) fn lease_probe_names(
    stack: &ProbeStack,
    dirs: &[c_int],
    names: &[*const libc::c_char],
    hold: usize,
) -> Option<Vec<Probed>> {
    assert_eq!(dirs.len(), names.len());
    let mut out = vec![c_int::MIN; names.len()];
    let mut fds = vec![-1 as c_int; names.len()];
    let job = NamesJob {
        dirs: dirs.as_ptr(),
        names: names.as_ptr(),
        out: out.as_mut_ptr(),
        fds: fds.as_mut_ptr(),
        len: names.len(),
        hold,
    };
    let saved_errno = errno();
    // SAFETY: `names_child` only reads `job` and writes `out` and `fds`,
    // all alive until `in_child` returns.
    let ran = unsafe { in_child(stack, names_child, &job as *const NamesJob as *mut c_void) };
    if ran == Ran::Lost {
        // Killed, or reaped by the program: what it left open is closed
        // here (each run was marked closed just before it was).
        for &fd in fds.iter().filter(|&&fd| fd >= 0) {
            // SAFETY: a descriptor the child opened and did not close.
            unsafe { libc::close(fd) };
        }
    }
    set_errno(saved_errno);
    (ran == Ran::Exited).then(|| {
        out.iter()
            .map(|&r| match r {
                c_int::MIN => Probed::NotReached,
                r if r < 0 => Probed::Open(-r),
                r => Probed::Lease(r),
            })
            .collect()
    })
}

/// How a probe's child went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ran {
    /// It could not be made.
    NotStarted,
    /// It exited normally, and was reaped here.
    Exited,
    /// It was killed, or the program reaped it first.
    Lost,
}

/// Runs `child(arg)` in a child sharing our memory and descriptor table
/// (`CLONE_VM | CLONE_VFORK | CLONE_FILES`, exit signal 0: no SIGCHLD), on
/// `stack`, and waits for it. Signals blocked here are blocked in the
/// child: a lease break (SIGIO) or any other signal dies with it, never run
/// as a handler; SIGSYS stays deliverable, so that a seccomp filter
/// trapping the clone (SECCOMP_RET_TRAP) reaches the program's handler,
/// which may answer an error, instead of killing it as a blocked SIGSYS
/// does. `errno` may change.
///
/// # Safety
/// `arg` must be what `child` expects, and what it points at must stay
/// alive and untouched until this returns (CLONE_VFORK suspends us until
/// the child has exited).
unsafe fn in_child(stack: &ProbeStack, child: extern "C" fn(*mut c_void) -> c_int, arg: *mut c_void) -> Ran {
    // The stack grows down from its 16-byte-aligned top.
    let top = (stack.0 as usize + STACK) & !15;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES;
    // SAFETY: `child` runs on its own stack with what the caller vouches
    // for.
    let pid = with_signals_blocked(|| unsafe { libc::clone(child, top as *mut c_void, flags, arg) });
    match pid {
        ..=0 => Ran::NotStarted,
        pid if reap(pid) => Ran::Exited,
        _ => Ran::Lost,
    }
}

/// Waits for the child; false if it did not exit normally, or if the
/// program reaped it first (a thread in `waitpid(-1, __WALL)`): then its
/// answers cannot be trusted, and this probe answers "unknown".
fn reap(pid: c_int) -> bool {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::__WCLONE) };
        if r == pid {
            return libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        }
        if r < 0 && errno() == libc::EINTR {
            continue;
        }
        return false;
    }
}

fn errno() -> c_int {
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn set_errno(v: c_int) {
    // SAFETY: this thread's errno slot.
    unsafe { *libc::__errno_location() = v }
}

/// On overlayfs: whether `name` in `dir` exists only in the upper layer
/// (created there, never in the image), as its file handle says
/// (`name_to_handle_at(AT_HANDLE_FID)`: overlayfs encodes the layer of the
/// object, with the `OVL_FH_FLAG_PATH_UPPER` flag for an upper-only one).
/// `None` when the handle cannot be read or has another format (an overlay
/// mounted in a user namespace).
pub(crate) fn overlay_upper_only(dir: std::os::fd::BorrowedFd<'_>, name: &core::ffi::CStr) -> Option<bool> {
    use std::os::fd::AsRawFd;
    const AT_HANDLE_FID: c_int = 0x200;
    const OVL_FILEID_V1: c_int = 0xf8;
    const OVL_FH_MAGIC: u8 = 0xfb;
    const OVL_FH_FLAG_PATH_UPPER: u8 = 1 << 2;
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: c_int,
        data: [u8; 128],
    }
    let mut h = Handle { bytes: 128, kind: 0, data: [0; 128] };
    let mut mount_id: c_int = 0;
    // SAFETY: `h` is a file_handle with room for 128 bytes, as announced in
    // its first field; `name` is a C string; `mount_id` an out-pointer.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut h as *mut Handle,
            &mut mount_id as *mut c_int,
            AT_HANDLE_FID,
        )
    };
    if r != 0 || h.kind != OVL_FILEID_V1 || h.bytes < 8 || h.data[4] != OVL_FH_MAGIC {
        return None;
    }
    Some(h.data[6] & OVL_FH_FLAG_PATH_UPPER != 0)
}

/// `fchmodat2(dir, name, mode, AT_SYMLINK_NOFOLLOW)` (Linux 6.6): changes
/// the mode of `name` itself, never of what a symlink swapped in there
/// points to (a symlink itself gives EOPNOTSUPP). ENOSYS on older kernels.
pub(crate) fn chmod_nofollow(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &core::ffi::CStr,
    mode: u32,
) -> rustix::io::Result<()> {
    use std::os::fd::AsRawFd;
    const SYS_FCHMODAT2: libc::c_long = 452;
    // SAFETY: plain integer and C-string arguments.
    let r = unsafe { libc::syscall(SYS_FCHMODAT2, dir.as_raw_fd(), name.as_ptr(), mode, libc::AT_SYMLINK_NOFOLLOW) };
    if r == 0 { Ok(()) } else { Err(rustix::io::Errno::from_raw_os_error(errno())) }
}

/// `removexattrat(dir, name, AT_SYMLINK_NOFOLLOW, attr)` (Linux 6.13):
/// works on a directory descriptor and a name, without /proc, and never
/// follows a final symlink. ENOSYS on older kernels.
pub(crate) fn removexattr_nofollow(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &core::ffi::CStr,
    attr: &core::ffi::CStr,
) -> rustix::io::Result<()> {
    use std::os::fd::AsRawFd;
    const SYS_REMOVEXATTRAT: libc::c_long = 466;
    // SAFETY: plain integer and C-string arguments.
    let r = unsafe {
        libc::syscall(SYS_REMOVEXATTRAT, dir.as_raw_fd(), name.as_ptr(), libc::AT_SYMLINK_NOFOLLOW, attr.as_ptr())
    };
    if r == 0 { Ok(()) } else { Err(rustix::io::Errno::from_raw_os_error(errno())) }
}

/// `sync_file_range(fd, off, len, SYNC_FILE_RANGE_WRITE)`: starts writeback
/// of the dirty pages in the range without waiting for it, and keeps them
/// cached.
pub(crate) fn sync_file_range_write(fd: std::os::fd::BorrowedFd<'_>, off: u64, len: u64) -> rustix::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (off, len) = (off.min(i64::MAX as u64) as i64, len.min(i64::MAX as u64) as i64);
    // SAFETY: plain integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_sync_file_range, fd.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE) };
    if r == 0 { Ok(()) } else { Err(rustix::io::Errno::from_raw_os_error(errno())) }
}

/// `sync_file_range(fd, off, len, WAIT_BEFORE | WRITE | WAIT_AFTER)`: writes
/// the dirty pages of the range and waits until they are written (data
/// only, no metadata: a way to bound dirty data, not a durability step).
pub(crate) fn sync_file_range_wait(fd: std::os::fd::BorrowedFd<'_>, off: u64, len: u64) -> rustix::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (off, len) = (off.min(i64::MAX as u64) as i64, len.min(i64::MAX as u64) as i64);
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: plain integer arguments.
    let r = unsafe { libc::syscall(libc::SYS_sync_file_range, fd.as_raw_fd(), off, len, flags) };
    if r == 0 { Ok(()) } else { Err(rustix::io::Errno::from_raw_os_error(errno())) }
}

/// `struct xattr_args` of the `*xattrat` calls (Linux 6.13).
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

const SYS_SETXATTRAT: libc::c_long = 463;
const SYS_GETXATTRAT: libc::c_long = 464;
const SYS_LISTXATTRAT: libc::c_long = 465;

fn size_result(r: libc::c_long) -> rustix::io::Result<usize> {
    if r >= 0 { Ok(r as usize) } else { Err(rustix::io::Errno::from_raw_os_error(errno())) }
}

/// `listxattrat(dir, name, AT_SYMLINK_NOFOLLOW, buf)` (Linux 6.13): the
/// attribute names of `name` itself, without /proc. ENOSYS on older kernels.
pub(crate) fn listxattr_nofollow(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &core::ffi::CStr,
    buf: &mut [u8],
) -> rustix::io::Result<usize> {
    use std::os::fd::AsRawFd;
    // SAFETY: `buf` is writable for its length; `name` is a C string.
    size_result(unsafe {
        libc::syscall(
            SYS_LISTXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            buf.as_mut_ptr(),
            buf.len(),
        )
    })
}

/// `getxattrat(dir, name, AT_SYMLINK_NOFOLLOW, attr, buf)` (Linux 6.13).
pub(crate) fn getxattr_nofollow(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &core::ffi::CStr,
    attr: &core::ffi::CStr,
    buf: &mut [u8],
) -> rustix::io::Result<usize> {
    use std::os::fd::AsRawFd;
    let mut args = XattrArgs { value: buf.as_mut_ptr() as u64, size: buf.len() as u32, flags: 0 };
    // SAFETY: `args` describes `buf`, writable for its length; the strings
    // are C strings; the size passed is the struct's.
    size_result(unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            attr.as_ptr(),
            &mut args as *mut XattrArgs,
            core::mem::size_of::<XattrArgs>(),
        )
    })
}

/// `setxattrat(dir, name, AT_SYMLINK_NOFOLLOW, attr, value)` (Linux 6.13).
pub(crate) fn setxattr_nofollow(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &core::ffi::CStr,
    attr: &core::ffi::CStr,
    value: &[u8],
) -> rustix::io::Result<()> {
    use std::os::fd::AsRawFd;
    let args = XattrArgs { value: value.as_ptr() as u64, size: value.len() as u32, flags: 0 };
    // SAFETY: `args` describes `value`, readable for its length; the
    // strings are C strings; the size passed is the struct's.
    size_result(unsafe {
        libc::syscall(
            SYS_SETXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            attr.as_ptr(),
            &args as *const XattrArgs,
            core::mem::size_of::<XattrArgs>(),
        )
    })
    .map(|_| ())
}

/// Runs `f` (which starts a thread or a child) with every signal but
/// SIGSYS blocked on this thread, so that what it starts begins with them
/// blocked; this thread's mask is restored before returning. SIGSYS stays
/// deliverable: a seccomp filter trapping a call must reach the program's
/// handler (a blocked SIGSYS would kill the process).
pub(crate) fn with_signals_blocked<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: sigset_t is plain data, filled and used as a mask only;
    // pthread_sigmask changes this thread's mask and is restored below.
    let old = unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::sigdelset(&mut all, libc::SIGSYS);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        old
    };
    let out = f();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut()) };
    out
}

/// The Unix sockets bound to a name in the filesystem that the kernel
/// knows in this process's network namespace, as (device, inode) of the
/// socket file: the device as the kernel encodes it (major << 20 | minor)
/// and the inode's low 32 bits (`sock_diag`, `UNIX_DIAG_VFS`). `None` if
/// they cannot be listed (no netlink, a seccomp policy, a truncated
/// answer).
pub(crate) fn bound_unix_sockets() -> Option<Vec<(u32, u32)>> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const UDIAG_SHOW_VFS: u32 = 2;
    const UNIX_DIAG_VFS: u16 = 1;
    // struct nlmsghdr, then struct unix_diag_req.
    let mut req = [0u8; 16 + 24];
    req[0..4].copy_from_slice(&(16u32 + 24).to_ne_bytes());
    req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    req[8..12].copy_from_slice(&1u32.to_ne_bytes());
    req[16] = libc::AF_UNIX as u8;
    req[20..24].copy_from_slice(&u32::MAX.to_ne_bytes()); // every state
    req[28..32].copy_from_slice(&UDIAG_SHOW_VFS.to_ne_bytes());
    let saved_errno = errno();
    // SAFETY: a new socket, closed below whatever happens.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG) };
    if fd < 0 {
        set_errno(saved_errno);
        return None;
    }
    let out = dump(fd, &req, |msg| {
        // struct unix_diag_msg (16 bytes), then attributes. A connected
        // stream or seqpacket socket (one a server accepted, which carries
        // its listener's name, or a client that bound a name) cannot be
        // connected to: only the others count.
        let (kind, state) = (c_int::from(*msg.get(1)?), *msg.get(2)?);
        if matches!(kind, libc::SOCK_STREAM | libc::SOCK_SEQPACKET) && state == 1 {
            return Some(None);
        }
        let mut attrs = msg.get(16..)?;
        let mut found = None;
        while attrs.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
            let kind = u16::from_ne_bytes([attrs[2], attrs[3]]);
            if len < 4 || len > attrs.len() {
                return None;
            }
            if kind == UNIX_DIAG_VFS && len >= 12 {
                let ino = u32::from_ne_bytes(attrs[4..8].try_into().ok()?);
                let dev = u32::from_ne_bytes(attrs[8..12].try_into().ok()?);
                found = Some((dev, ino));
            }
            attrs = attrs.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        }
        Some(found)
    });
    // SAFETY: the socket made above.
    unsafe { libc::close(fd) };
    set_errno(saved_errno);
    out
}

/// Sends `req` on the netlink socket `fd` and reads the dump it answers,
/// giving each message's payload to `each` (which answers `None` for a
/// message it cannot read, or what it found in it); `None` if the dump
/// failed or was cut short.
fn dump<T>(fd: c_int, req: &[u8], mut each: impl FnMut(&[u8]) -> Option<Option<T>>) -> Option<Vec<T>> {
    // SAFETY: `req` is a readable buffer of that length.
    if unsafe { libc::send(fd, req.as_ptr() as *const c_void, req.len(), 0) } != req.len() as isize {
        return None;
    }
    let mut buf = vec![0u8; 32 << 10];
    let mut out = Vec::new();
    loop {
        // SAFETY: `buf` is writable for its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr() as *mut c_void, buf.len(), 0) };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        let mut msgs = buf.get(..usize::try_from(n).ok()?)?;
        if msgs.is_empty() {
            return None;
        }
        while msgs.len() >= 16 {
            let len = u32::from_ne_bytes(msgs[0..4].try_into().ok()?) as usize;
            let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
            if len < 16 || len > msgs.len() {
                return None;
            }
            match i32::from(kind) {
                libc::NLMSG_DONE => return Some(out),
                libc::NLMSG_ERROR => return None,
                _ => {
                    if let Some(found) = each(&msgs[16..len])? {
                        out.push(found);
                    }
                }
            }
            msgs = msgs.get(len.next_multiple_of(4)..).unwrap_or(&[]);
        }
    }
}
