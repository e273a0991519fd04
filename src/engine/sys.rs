//! The engine's few calls that neither rustix nor std offers safely: the
//! only `unsafe` code of the engine, each block with its reason.
#![allow(unsafe_code)]

use core::ffi::{c_int, c_void};

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
    for i in 0..job.len {
        // SAFETY: `i < len`, the length of both arrays.
        let fd = unsafe { *job.fds.add(i) };
        // SAFETY: fcntl on a descriptor of the shared table; a lease
        // taken here belongs to this child and is dropped at once.
        let answer = unsafe {
            if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) == 0 {
                libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK);
                0
            } else {
                *libc::__errno_location()
            }
        };
        // SAFETY: as above.
        unsafe { *job.out.add(i) = answer };
    }
    0
}

/// Asks for a read lease on each descriptor (see
/// [`writers`](super::writers)): for each, `Some(0)` if one was granted,
/// `Some(errno)` if refused, `None` if the probe could not run.
pub(crate) fn lease_probe(fds: &[c_int]) -> Vec<Option<c_int>> {
    let unknown = || vec![None; fds.len()];
    let mut out = vec![-1 as c_int; fds.len()];
    let job = Job { fds: fds.as_ptr(), out: out.as_mut_ptr(), len: fds.len() };
    let mut stack = vec![0u8; STACK];
    // The stack grows down from its 16-byte-aligned top.
    let top = (stack.as_mut_ptr() as usize + STACK) & !15;
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_FILES; // exit signal 0: no SIGCHLD
    let saved_errno = errno();
    // SAFETY: sigset_t is plain data; filled and used as a mask only.
    let pid = unsafe {
        let mut all: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut all);
        // SIGSYS stays deliverable: a seccomp filter that traps the clone
        // (SECCOMP_RET_TRAP) reaches the program's handler, which may answer
        // an error, instead of killing it as a blocked SIGSYS does.
        libc::sigdelset(&mut all, libc::SIGSYS);
        // Blocked here, so blocked in the child: a lease break (SIGIO)
        // or any other signal dies with it, never run as a handler.
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
        // SAFETY: `child` only reads `job` and writes `out`, both alive
        // until it has exited (CLONE_VFORK suspends us until then), on
        // its own stack.
        let pid = libc::clone(child, top as *mut c_void, flags, &job as *const Job as *mut c_void);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
        pid
    };
    let answers = if pid > 0 && reap(pid) { out.iter().map(|&r| (r >= 0).then_some(r)).collect() } else { unknown() };
    drop(stack);
    set_errno(saved_errno);
    answers
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
