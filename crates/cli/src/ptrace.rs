//! The supervisor's calls that neither std nor rustix offer: ptrace,
//! seccomp filters, reading another process's memory, and starting the
//! traced program. The only `unsafe` of the command, each block with its
//! reason. Numbers are x86_64's (and the i386 and x32 ones a 64-bit
//! process can reach).
#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd};

use libc::{c_int, c_long, c_void, pid_t};

const PTRACE_SEIZE: c_long = 0x4206;
const PTRACE_LISTEN: c_long = 0x4208;
const PTRACE_GETEVENTMSG: c_long = 0x4201;
const PTRACE_GET_SYSCALL_INFO: c_long = 0x420e;

/// `PTRACE_O_*` options set at the seize (inherited by every new tracee).
pub const OPTIONS: c_long = 0x1 // TRACESYSGOOD
    | 0x2 // TRACEFORK
    | 0x4 // TRACEVFORK
    | 0x8 // TRACECLONE
    | 0x10 // TRACEEXEC
    | 0x80 // TRACESECCOMP
    | 0x10_0000; // EXITKILL: the traced die with the supervisor

/// `PTRACE_EVENT_*` numbers, as found in `status >> 16`.
pub mod event {
    /// fork
    pub const FORK: i32 = 1;
    /// vfork
    pub const VFORK: i32 = 2;
    /// clone
    pub const CLONE: i32 = 3;
    /// execve
    pub const EXEC: i32 = 4;
    /// a `SECCOMP_RET_TRACE` of our filter
    pub const SECCOMP: i32 = 7;
    /// group-stop or the first stop of a new tracee (PTRACE_SEIZE)
    pub const STOP: i32 = 128;
}

/// `AUDIT_ARCH_*` of a system call.
pub const ARCH_X86_64: u32 = 0xC000_003E;
/// i386, also a 64-bit process's `int 0x80`.
pub const ARCH_I386: u32 = 0x4000_0003;
/// x32 numbers carry this bit.
pub const X32_BIT: u64 = 0x4000_0000;
/// `CLONE_UNTRACED`: a child the tracer would not see.
pub const CLONE_UNTRACED: u64 = 0x0080_0000;

/// What `PTRACE_GET_SYSCALL_INFO` tells of a stopped tracee.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyscallInfo {
    /// 1 entry, 2 exit, 3 seccomp.
    pub op: u8,
    /// `AUDIT_ARCH_*`.
    pub arch: u32,
    /// The syscall number (entry, seccomp).
    pub nr: u64,
    /// Its arguments (entry, seccomp).
    pub args: [u64; 6],
    /// The return value (exit).
    pub rval: i64,
}

#[repr(C)]
#[derive(Default)]
struct RawInfo {
    op: u8,
    pad: [u8; 3],
    arch: u32,
    ip: u64,
    sp: u64,
    data: [u64; 7],
    ret_data: u32,
    pad2: u32,
}

fn check(r: c_long) -> io::Result<c_long> {
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) }
}

fn ptrace(req: c_long, pid: pid_t, addr: usize, data: usize) -> io::Result<c_long> {
    // SAFETY: every request made here passes either plain integers or a
    // pointer to a buffer of the size the request writes.
    check(unsafe { libc::syscall(libc::SYS_ptrace, req, pid, addr, data) })
}

/// Attaches to `pid` without stopping it.
pub fn seize(pid: pid_t) -> io::Result<()> {
    ptrace(PTRACE_SEIZE, pid, 0, OPTIONS as usize).map(|_| ())
}

/// Resumes a stopped tracee, delivering `sig` (0: none).
pub fn cont(tid: pid_t, sig: c_int) -> io::Result<()> {
    ptrace(libc::PTRACE_CONT as c_long, tid, 0, sig as usize).map(|_| ())
}

/// Resumes a tracee until the exit of the system call it is in.
pub fn to_syscall_exit(tid: pid_t) -> io::Result<()> {
    ptrace(libc::PTRACE_SYSCALL as c_long, tid, 0, 0).map(|_| ())
}

/// Leaves a tracee in its group-stop, still reporting later events
/// (job control: SIGCONT resumes it as without a tracer).
pub fn listen(tid: pid_t) -> io::Result<()> {
    ptrace(PTRACE_LISTEN, tid, 0, 0).map(|_| ())
}

/// The message of the last event (a new child's pid).
pub fn event_msg(tid: pid_t) -> io::Result<u64> {
    let mut msg: u64 = 0;
    ptrace(PTRACE_GETEVENTMSG, tid, 0, &mut msg as *mut u64 as usize)?;
    Ok(msg)
}

/// The system call a stopped tracee is in.
pub fn syscall_info(tid: pid_t) -> io::Result<SyscallInfo> {
    let mut raw = RawInfo::default();
    ptrace(PTRACE_GET_SYSCALL_INFO, tid, std::mem::size_of::<RawInfo>(), &mut raw as *mut RawInfo as usize)?;
    let mut args = [0u64; 6];
    args.copy_from_slice(&raw.data[1..7]);
    Ok(SyscallInfo { op: raw.op, arch: raw.arch, nr: raw.data[0], args, rval: raw.data[0] as i64 })
}

fn with_regs(tid: pid_t, f: impl FnOnce(&mut libc::user_regs_struct)) -> io::Result<()> {
    let mut regs = std::mem::MaybeUninit::<libc::user_regs_struct>::zeroed();
    ptrace(libc::PTRACE_GETREGS as c_long, tid, 0, regs.as_mut_ptr() as usize)?;
    // SAFETY: PTRACE_GETREGS filled the whole struct.
    let mut regs = unsafe { regs.assume_init() };
    f(&mut regs);
    ptrace(libc::PTRACE_SETREGS as c_long, tid, 0, &regs as *const libc::user_regs_struct as usize).map(|_| ())
}

/// Sets the value the system call a tracee is leaving returns.
pub fn set_return(tid: pid_t, value: i64) -> io::Result<()> {
    with_regs(tid, |r| r.rax = value as u64)
}

/// Sets the first argument of the system call a tracee is entering
/// (at its seccomp stop): `rdi`, or `rbx` for an i386 call.
pub fn set_first_arg(tid: pid_t, arch: u32, value: u64) -> io::Result<()> {
    with_regs(tid, |r| if arch == ARCH_I386 { r.rbx = value } else { r.rdi = value })
}

/// `waitpid(-1, __WALL)`: the next child or tracee with news, and its status.
pub fn wait_any() -> io::Result<(pid_t, c_int)> {
    loop {
        match wait_any_or_tick() {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            other => return other,
        }
    }
}

/// As [`wait_any`], but a signal (the tick of [`tick_every`]) ends the
/// wait with EINTR.
pub fn wait_any_or_tick() -> io::Result<(pid_t, c_int)> {
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::__WALL) };
    if pid >= 0 { Ok((pid, status)) } else { Err(io::Error::last_os_error()) }
}

extern "C" fn on_tick(_: c_int) {}

/// A SIGALRM every `period`, caught by a handler that does nothing and
/// installed without `SA_RESTART`: a blocking `waitpid` returns EINTR.
/// (Neither the timer nor, past an exec, the handler reaches a child.)
pub fn tick_every(period: std::time::Duration) -> io::Result<()> {
    // SAFETY: a plain sigaction with an async-signal-safe handler, and a timer.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_tick as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut sa.sa_mask);
        check(libc::sigaction(libc::SIGALRM, &sa, std::ptr::null_mut()) as c_long)?;
        let t = libc::timeval { tv_sec: period.as_secs() as libc::time_t, tv_usec: period.subsec_micros() as _ };
        let it = libc::itimerval { it_interval: t, it_value: t };
        check(libc::setitimer(libc::ITIMER_REAL, &it, std::ptr::null_mut()) as c_long)?;
    }
    Ok(())
}

/// `n` counters in memory shared with every process forked later (the
/// helpers): what a helper adds there, the supervisor reads. Made once,
/// for the life of the process.
pub fn shared_counters(n: usize) -> io::Result<&'static [std::sync::atomic::AtomicU64]> {
    let len = n * std::mem::size_of::<u64>();
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a new anonymous mapping, zero-filled, never unmapped.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `len` bytes, aligned to a page, valid for the life of the
    // process; AtomicU64 has the layout of u64 and any bytes are valid.
    Ok(unsafe { std::slice::from_raw_parts(p as *const std::sync::atomic::AtomicU64, n) })
}

/// Reads the NUL-terminated string at `addr` in `pid`'s memory (at most
/// `PATH_MAX` bytes, as the kernel reads a path).
pub fn read_path(pid: pid_t, addr: u64) -> io::Result<CString> {
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < libc::PATH_MAX as usize {
        // Never read across a page boundary in one call: the next page may
        // not be mapped although the string ends before it.
        let room = 4096 - (at as usize & 4095);
        let mut buf = vec![0u8; room];
        let local = libc::iovec { iov_base: buf.as_mut_ptr() as *mut c_void, iov_len: room };
        let remote = libc::iovec { iov_base: at as *mut c_void, iov_len: room };
        // SAFETY: `local` describes `buf`, writable for `room` bytes.
        let n = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
        if n <= 0 {
            return Err(if n < 0 { io::Error::last_os_error() } else { io::Error::from_raw_os_error(libc::EFAULT) });
        }
        let got = &buf[..n as usize];
        if let Some(end) = got.iter().position(|&b| b == 0) {
            out.extend_from_slice(&got[..end]);
            return Ok(CString::new(out).expect("cut at the first NUL"));
        }
        out.extend_from_slice(got);
        at += n as u64;
    }
    Err(io::Error::from_raw_os_error(libc::ENAMETOOLONG))
}

/// One BPF instruction.
pub type Insn = libc::sock_filter;

/// Starts `path` with `argv` and `envp` in a new process that waits, before
/// anything else, for a byte on a pipe (the supervisor attaches meanwhile),
/// then installs `filter` (with `no_new_privs` if the caller may not
/// install one without it) and executes the program. Returns its pid, the
/// pipe's writing end, and a pipe that reports `[stage, errno]` if it
/// could not start (stage 1: the filter, 2: the exec; EOF when the exec
/// succeeded).
pub fn spawn_waiting(
    path: &CStr,
    argv: &[CString],
    envp: &[CString],
    filter: &[Insn],
) -> io::Result<(pid_t, OwnedFd, OwnedFd)> {
    let mut go = [0 as c_int; 2];
    let mut report = [0 as c_int; 2];
    // SAFETY: out-arrays of two descriptors.
    if unsafe { libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::pipe2(report.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let argv_ptrs: Vec<*const libc::c_char> =
        argv.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let envp_ptrs: Vec<*const libc::c_char> =
        envp.iter().map(|a| a.as_ptr()).chain(std::iter::once(std::ptr::null())).collect();
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut Insn };
    // SAFETY: the child only makes async-signal-safe system calls on
    // memory prepared before the fork, then executes or exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: the child side, see above.
        unsafe {
            // Tells the supervisor what failed: [stage, errno], stage 1 the
            // filter (tracing is impossible), 2 the exec.
            let fail = |stage: c_int, e: c_int| -> ! {
                let msg = [stage, e];
                libc::write(report[1], msg.as_ptr() as *const c_void, 8);
                libc::_exit(127)
            };
            libc::close(go[1]);
            libc::close(report[0]);
            // The supervisor holds some signals until it handles them: the
            // program starts with none blocked.
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
            // Rust's runtime ignores SIGPIPE in xrename; the program starts
            // with the default, as std::process::Command gives it (an
            // ignored disposition would survive the exec).
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            let mut b = 0u8;
            if libc::read(go[0], &mut b as *mut u8 as *mut c_void, 1) != 1 {
                libc::_exit(125); // the supervisor is gone
            }
            libc::close(go[0]);
            let install = || libc::syscall(libc::SYS_seccomp, 1 /* SET_MODE_FILTER */, 0, &prog);
            // Without CAP_SYS_ADMIN a filter needs no_new_privs (EACCES).
            if install() != 0
                && (*libc::__errno_location() != libc::EACCES
                    || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || install() != 0)
            {
                fail(1, *libc::__errno_location());
            }
            libc::execve(path.as_ptr(), argv_ptrs.as_ptr(), envp_ptrs.as_ptr());
            fail(2, *libc::__errno_location());
        }
    }
    // SAFETY: the parent's ends, ours alone from now on.
    unsafe {
        libc::close(go[0]);
        libc::close(report[1]);
        Ok((pid, OwnedFd::from_raw_fd(go[1]), OwnedFd::from_raw_fd(report[0])))
    }
}

/// Forks a helper process that runs `f` and exits with what it returns.
pub fn fork_helper(f: impl FnOnce() -> i32) -> io::Result<pid_t> {
    // SAFETY: the supervisor is single-threaded, so the child may run
    // ordinary code; it never returns from here.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // The helper takes the program's file size limit; a log line past
        // it must fail (EFBIG), not kill the helper after a finished move
        // (which would tell the program EXDEV).
        // SAFETY: a plain signal disposition, in this process only.
        unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
        let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(libc::EXDEV);
        // SAFETY: ends the helper without running the parent's atexit work.
        unsafe { libc::_exit(code) }
    }
    Ok(pid)
}

/// The helper takes the target thread's namespaces, for each of `kinds`
/// (`CLONE_NEWUSER`, `CLONE_NEWNS`) that differs from ours: `setns` on
/// `/proc/TID/ns/*`, the user namespace first. (A pidfd would name the
/// whole process, and `pidfd_open` refuses a thread that is not its
/// leader: a Go program's renames come from any thread.)
pub fn enter_namespaces(tid: pid_t, kinds: c_int) -> io::Result<()> {
    // All opened first: once in the user namespace, /proc may judge us anew.
    let mut fds = Vec::new();
    for (name, kind) in [("user", libc::CLONE_NEWUSER), ("mnt", libc::CLONE_NEWNS)] {
        if kinds & kind != 0 {
            let path = std::ffi::CString::new(format!("/proc/{tid}/ns/{name}")).expect("no NUL");
            // SAFETY: a C string; the descriptor is owned at once.
            let fd = check(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) } as c_long)?;
            // SAFETY: a new descriptor, ours alone.
            fds.push((unsafe { OwnedFd::from_raw_fd(fd as c_int) }, kind));
        }
    }
    for (fd, kind) in &fds {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid namespace descriptor.
        check(unsafe { libc::setns(fd.as_raw_fd(), *kind) } as c_long)?;
    }
    Ok(())
}

/// The target's credentials, as `/proc/PID/status` gives them.
#[derive(Debug, Clone, Default)]
pub struct Creds {
    /// real, effective, saved, filesystem uid
    pub uid: [u32; 4],
    /// real, effective, saved, filesystem gid
    pub gid: [u32; 4],
    /// supplementary groups
    pub groups: Vec<u32>,
    /// inheritable, permitted, effective capabilities
    pub caps: [u64; 3],
}

/// Takes `c` as the helper's own credentials: groups, gids and uids (the
/// filesystem ones included) and capabilities, in the order that keeps
/// the right to set the next.
pub fn take_creds(c: &Creds) -> io::Result<()> {
    // SAFETY: plain integer arguments and a valid array of groups.
    unsafe {
        check(libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) as c_long)?;
        let mut ours = vec![0 as libc::gid_t; 65536];
        let n = check(libc::getgroups(ours.len() as c_int, ours.as_mut_ptr()) as c_long)? as usize;
        ours.truncate(n);
        let (mut want, mut have) = (c.groups.clone(), ours);
        want.sort_unstable();
        have.sort_unstable();
        // Setting groups needs CAP_SETGID even to the same list.
        if want != have {
            check(libc::setgroups(c.groups.len(), c.groups.as_ptr()) as c_long)?;
        }
        check(libc::setresgid(c.gid[0], c.gid[1], c.gid[2]) as c_long)?;
        check(libc::setresuid(c.uid[0], c.uid[1], c.uid[2]) as c_long)?;
        libc::setfsgid(c.gid[3]);
        libc::setfsuid(c.uid[3]);
        if libc::setfsuid(u32::MAX) as u32 != c.uid[3] || libc::setfsgid(u32::MAX) as u32 != c.gid[3] {
            return Err(io::Error::from_raw_os_error(libc::EPERM));
        }
    }
    let mut set = rustix::thread::CapabilitySets {
        effective: rustix::thread::CapabilitySet::from_bits_retain(c.caps[2]),
        permitted: rustix::thread::CapabilitySet::from_bits_retain(c.caps[1]),
        inheritable: rustix::thread::CapabilitySet::from_bits_retain(c.caps[0]),
    };
    // The setuid above may have cleared what the target has: set exactly
    // its sets (raising fails, and then the move is not made).
    rustix::thread::set_capabilities(None, set).map_err(io::Error::from)?;
    set = rustix::thread::capabilities(None).map_err(io::Error::from)?;
    if set.effective.bits() != c.caps[2] {
        return Err(io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

/// `chroot` into the directory `root` (the target's root).
pub fn chroot_to(root: &OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor and a C string.
    unsafe {
        check(libc::fchdir(root.as_raw_fd()) as c_long)?;
        check(libc::chroot(c".".as_ptr()) as c_long)?;
    }
    Ok(())
}

/// `fchdir` to `dir`.
pub fn chdir_to(dir: &OwnedFd) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid descriptor.
    check(unsafe { libc::fchdir(dir.as_raw_fd()) } as c_long).map(|_| ())
}

/// Sends `sig` to `pid`.
pub fn kill(pid: pid_t, sig: c_int) {
    // SAFETY: plain integer arguments.
    unsafe { libc::kill(pid, sig) };
}

/// The file size limit (`RLIMIT_FSIZE`, soft and hard) of `pid`, if it can
/// be read.
pub fn fsize_limit(pid: pid_t) -> Option<libc::rlimit> {
    let mut old = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: reads `pid`'s limit into `old`; sets nothing.
    let r = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, std::ptr::null(), &mut old) };
    (r == 0).then_some(old)
}

/// Takes `limit` as this process's file size limit.
pub fn set_fsize_limit(limit: libc::rlimit) -> io::Result<()> {
    // SAFETY: a valid limit for this process.
    check(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) } as c_long).map(|_| ())
}

/// `FS_IOC_FSGETXATTR` on an open file: its extended flags
/// (`FS_XFLAG_PROJINHERIT`, ...) and project id (XFS, ext4, f2fs, btrfs).
pub fn fs_xattr(fd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
    use std::os::fd::AsRawFd;
    // struct fsxattr: xflags, extsize, nextents, projid, cowextsize, pad[8].
    let mut buf = [0u32; 7];
    const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f; // _IOR('X', 31, struct fsxattr)
    // SAFETY: the kernel writes at most 28 bytes into `buf`.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_FSGETXATTR, buf.as_mut_ptr()) } as c_long)?;
    Ok((buf[0], buf[3]))
}

/// `FS_IOC_GET_ENCRYPTION_POLICY_EX` on an open file: its fscrypt policy
/// (version, modes, flags and master key), or None if it is not encrypted.
pub fn encryption_policy(fd: BorrowedFd<'_>) -> io::Result<Option<Vec<u8>>> {
    use std::os::fd::AsRawFd;
    // struct fscrypt_get_policy_ex_arg: u64 policy_size (in/out), then the policy.
    let mut buf = [0u8; 8 + 24];
    buf[..8].copy_from_slice(&24u64.to_ne_bytes());
    const FS_IOC_GET_ENCRYPTION_POLICY_EX: libc::c_ulong = 0xc009_6616; // _IOWR('f', 22, __u8[9])
    // SAFETY: the kernel writes at most policy_size (24) bytes after the size.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), FS_IOC_GET_ENCRYPTION_POLICY_EX, buf.as_mut_ptr()) };
    if r != 0 {
        let e = io::Error::last_os_error();
        return if e.raw_os_error() == Some(libc::ENODATA) { Ok(None) } else { Err(e) };
    }
    let size = (u64::from_ne_bytes(buf[..8].try_into().expect("8")) as usize).min(24);
    Ok(Some(buf[8..8 + size].to_vec()))
}

/// The width in columns of the terminal on `fd`, if it is one and says.
pub fn terminal_width(fd: BorrowedFd<'_>) -> Option<usize> {
    use std::os::fd::AsRawFd;
    let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0).then_some(usize::from(ws.ws_col))
}
