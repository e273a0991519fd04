//! The next definitions of `rename`, `renameat` and `renameat2`.
//!
//! Each is looked up once with `dlsym(RTLD_NEXT, ...)` and cached in an
//! `AtomicPtr`, the way rustix caches weak symbols: the fast path is one
//! atomic load and an indirect call, with no lock and no allocation, so it
//! stays async-signal-safe (POSIX lists `rename` as such). The lookup runs
//! from the library constructor ([`resolve_all`]); a call that arrives
//! earlier (from another library's constructor) resolves on the spot.
//!
//! If the next definition does not exist (a libc without `renameat2`), the
//! cache holds a raw-syscall stand-in instead, never a null pointer.
#![allow(unsafe_code)]

use core::ffi::{c_char, c_int, c_uint, c_void};
use core::sync::atomic::{AtomicPtr, Ordering};

use xrename_engine::virtualisers;

type RenameFn = unsafe extern "C" fn(*const c_char, *const c_char) -> c_int;
type RenameatFn = unsafe extern "C" fn(c_int, *const c_char, c_int, *const c_char) -> c_int;
type Renameat2Fn = unsafe extern "C" fn(c_int, *const c_char, c_int, *const c_char, c_uint) -> c_int;

static RENAME: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static RENAMEAT: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());
static RENAMEAT2: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());

/// Resolves all three symbols; called from the library constructor.
pub fn resolve_all() {
    resolve(&RENAME, c"rename", raw_rename as *mut c_void);
    resolve(&RENAMEAT, c"renameat", raw_renameat as *mut c_void);
    resolve(&RENAMEAT2, c"renameat2", raw_renameat2 as *mut c_void);
}

#[cold]
#[inline(never)]
fn resolve(slot: &AtomicPtr<c_void>, name: &core::ffi::CStr, fallback: *mut c_void) -> *mut c_void {
    // SAFETY: `name` is NUL-terminated; RTLD_NEXT is a valid pseudo-handle.
    let mut p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    if p.is_null() {
        p = fallback;
    }
    // Several threads may race here; they all store the same value.
    slot.store(p, Ordering::Release);
    p
}

#[inline(always)]
fn load(slot: &AtomicPtr<c_void>, name: &core::ffi::CStr, fallback: *mut c_void) -> *mut c_void {
    let p = slot.load(Ordering::Acquire);
    if p.is_null() { resolve(slot, name, fallback) } else { p }
}

/// Calls the next `rename`.
///
/// # Safety
/// The arguments are passed on untouched; same contract as `rename(3)`.
#[inline(always)]
pub unsafe fn rename(old: *const c_char, new: *const c_char) -> c_int {
    let p = load(&RENAME, c"rename", raw_rename as *mut c_void);
    // SAFETY: `p` came from dlsym for a symbol with this signature, or is `raw_rename`.
    let f: RenameFn = unsafe { core::mem::transmute::<*mut c_void, RenameFn>(p) };
    // SAFETY: the caller's contract.
    unsafe { f(old, new) }
}

/// Calls the next `renameat`.
///
/// # Safety
/// The arguments are passed on untouched; same contract as `renameat(2)`.
#[inline(always)]
pub unsafe fn renameat(olddirfd: c_int, old: *const c_char, newdirfd: c_int, new: *const c_char) -> c_int {
    let p = load(&RENAMEAT, c"renameat", raw_renameat as *mut c_void);
    // SAFETY: as in `rename`.
    let f: RenameatFn = unsafe { core::mem::transmute::<*mut c_void, RenameatFn>(p) };
    // SAFETY: the caller's contract.
    unsafe { f(olddirfd, old, newdirfd, new) }
}

/// Calls the next `renameat2`.
///
/// # Safety
/// The arguments are passed on untouched; same contract as `renameat2(2)`.
#[inline(always)]
pub unsafe fn renameat2(
    olddirfd: c_int,
    old: *const c_char,
    newdirfd: c_int,
    new: *const c_char,
    flags: c_uint,
) -> c_int {
    let p = load(&RENAMEAT2, c"renameat2", raw_renameat2 as *mut c_void);
    // SAFETY: as in `rename`.
    let f: Renameat2Fn = unsafe { core::mem::transmute::<*mut c_void, Renameat2Fn>(p) };
    // SAFETY: the caller's contract.
    unsafe { f(olddirfd, old, newdirfd, new, flags) }
}

unsafe extern "C" fn raw_rename(old: *const c_char, new: *const c_char) -> c_int {
    // SAFETY: renameat2(2) with the caller's pointers; the kernel validates them.
    unsafe { raw_renameat2(libc::AT_FDCWD, old, libc::AT_FDCWD, new, 0) }
}

unsafe extern "C" fn raw_renameat(olddirfd: c_int, old: *const c_char, newdirfd: c_int, new: *const c_char) -> c_int {
    // SAFETY: as above.
    unsafe { raw_renameat2(olddirfd, old, newdirfd, new, 0) }
}

unsafe extern "C" fn raw_renameat2(
    olddirfd: c_int,
    old: *const c_char,
    newdirfd: c_int,
    new: *const c_char,
    flags: c_uint,
) -> c_int {
    // SAFETY: libc's syscall() sets errno and returns -1 on failure, like the libc wrapper.
    unsafe { libc::syscall(libc::SYS_renameat2, olddirfd, old, newdirfd, new, flags) as c_int }
}

/// Writes `bytes` to the pipe, FIFO or socket `fd` (standard error) without
/// ever blocking or raising SIGPIPE in the program. A socket gets one
/// `send(MSG_DONTWAIT | MSG_NOSIGNAL)`. A pipe is written through a new,
/// non-blocking open file of it (`/proc/self/fd/N`: the program's own
/// file keeps its flags), whole lines of at most `PIPE_BUF` bytes only
/// (atomic: all or nothing), with SIGPIPE blocked in this thread and one
/// that the write raised taken back with `sigtimedwait`.
pub fn write_pipe_quietly(fd: c_int, bytes: &[u8]) {
    // SAFETY: `bytes` is valid for its length; flags are plain integers.
    let sent = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    // SAFETY: this thread's errno slot.
    if sent >= 0 || unsafe { *libc::__errno_location() } != libc::ENOTSOCK || bytes.len() > libc::PIPE_BUF {
        return;
    }
    let path = format!("/proc/self/fd/{fd}\0");
    // SAFETY: a NUL-terminated path.
    let pipe = unsafe { libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC) };
    if pipe < 0 {
        return;
    }
    write_without(libc::SIGPIPE, libc::EPIPE, pipe, bytes);
    // SAFETY: our own descriptor.
    unsafe { libc::close(pipe) };
}

/// Writes `bytes` to `fd` with `sig` blocked in this thread; if the write
/// fails with `err` (the failure that raises `sig`), the signal it raised
/// is taken back, unless one was pending already. The program never
/// receives a signal our write caused.
fn write_without(sig: c_int, err: c_int, fd: c_int, bytes: &[u8]) {
    // SAFETY: sigset_t is plain data, used through the libc calls only;
    // `bytes` is valid for its length.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        let mut old: libc::sigset_t = core::mem::zeroed();
        let mut pending: libc::sigset_t = core::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        libc::sigpending(&mut pending);
        let was_pending = libc::sigismember(&pending, sig) == 1;
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        if n < 0 && *libc::__errno_location() == err && !was_pending {
            let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            libc::sigtimedwait(&set, core::ptr::null_mut(), &zero);
        }
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, core::ptr::null_mut());
    }
}

/// Appends `bytes` to the regular file `fd` without ever raising SIGXFSZ
/// in the program (its default action kills): nothing is written if the
/// line would pass `RLIMIT_FSIZE` (no half line either), and should a
/// concurrent writer make it pass anyway, the signal is blocked in this
/// thread for the write and one that the write raised is taken back.
pub fn write_file_quietly(fd: c_int, bytes: &[u8]) {
    // SAFETY: rlimit and stat are plain data, filled by the kernel.
    let (lim, size) = unsafe {
        let mut lim: libc::rlimit = core::mem::zeroed();
        let mut st: libc::stat = core::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim) != 0 || libc::fstat(fd, &mut st) != 0 {
            return;
        }
        (lim.rlim_cur, st.st_size as u64)
    };
    if lim != libc::RLIM_INFINITY && size + bytes.len() as u64 > lim {
        return;
    }
    write_without(libc::SIGXFSZ, libc::EFBIG, fd, bytes);
}

/// The filesystem calls the engine makes as raw syscalls, by the names a
/// library would interpose them under.
const FS_CALLS: &[&core::ffi::CStr] = &[
    c"open",
    c"open64",
    c"openat",
    c"openat64",
    c"stat",
    c"lstat",
    c"fstatat",
    c"statx",
    c"__xstat",
    c"__lxstat",
    c"__fxstatat",
    c"unlink",
    c"unlinkat",
    c"mkdir",
    c"mkdirat",
    c"rmdir",
    c"chown",
    c"lchown",
    c"fchown",
    c"fchownat",
    c"chmod",
    c"fchmod",
    c"fchmodat",
    c"mknod",
    c"mknodat",
    c"__xmknod",
    c"__xmknodat",
    c"link",
    c"linkat",
    c"symlink",
    c"symlinkat",
    c"readlink",
    c"readlinkat",
    c"setxattr",
    c"lsetxattr",
    c"fsetxattr",
    c"getxattr",
    c"lgetxattr",
    c"fgetxattr",
    c"listxattr",
    c"llistxattr",
    c"flistxattr",
    c"removexattr",
    c"lremovexattr",
    c"fremovexattr",
    c"utimensat",
    c"futimens",
    c"lutimes",
    c"fstat",
    c"fstat64",
    c"__fxstat",
    c"fstatat64",
    c"newfstatat",
    c"truncate",
    c"ftruncate",
    c"rename",
    c"renameat",
    c"renameat2",
];

/// Another loaded object that defines filesystem calls the engine makes as
/// raw syscalls (fakechroot translating paths, fakeroot faking owners and
/// device nodes): the first definition of each name in the global scope
/// (`dlsym(RTLD_DEFAULT)`) is looked up, and `dladdr` tells which object
/// it is in. Anything but the C library, the dynamic loader, xrename itself
/// and the libraries that change neither paths nor owners
/// ([`virtualisers::HARMLESS`]) is named: the engine, which acts on real
/// paths and real owners, must then step aside.
pub fn interposer() -> Option<String> {
    let ours = object_of(interposer as *const c_void);
    for name in FS_CALLS {
        // SAFETY: `name` is NUL-terminated; RTLD_DEFAULT is a valid pseudo-handle.
        let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
        if p.is_null() {
            continue;
        }
        // A program built without PIE that takes the address of one of
        // these calls makes its own PLT stub the canonical address: that
        // is no definition of the call, and the program no virtualiser.
        if in_main_program(p as usize) {
            continue;
        }
        let Some(object) = object_of(p) else { continue };
        let base = object.rsplit('/').next().unwrap_or(&object);
        let system = base.starts_with("libc.so") || base.starts_with("ld-linux") || base.starts_with("libc-");
        if system || Some(&object) == ours.as_ref() || virtualisers::harmless(base) {
            continue;
        }
        return Some(format!("{base} ({})", name.to_string_lossy()));
    }
    None
}

/// Whether `addr` lies in a loaded segment of the main program (the first
/// object `dl_iterate_phdr` reports).
fn in_main_program(addr: usize) -> bool {
    unsafe extern "C" fn first(info: *mut libc::dl_phdr_info, _: libc::size_t, data: *mut c_void) -> libc::c_int {
        // SAFETY: the loader passes a valid info for the call's duration;
        // `data` is the `(usize, bool)` below.
        let (info, out) = unsafe { (&*info, &mut *(data as *mut (usize, bool))) };
        let phdrs = if info.dlpi_phdr.is_null() {
            &[][..]
        } else {
            // SAFETY: dlpi_phnum headers at dlpi_phdr, as the loader says.
            unsafe { core::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) }
        };
        out.1 = phdrs.iter().any(|ph| {
            let start = (info.dlpi_addr as usize).wrapping_add(ph.p_vaddr as usize);
            ph.p_type == libc::PT_LOAD && (start..start.wrapping_add(ph.p_memsz as usize)).contains(&out.0)
        });
        1 // the main program comes first: stop there
    }
    let mut state = (addr, false);
    // SAFETY: `first` only reads what the loader gives and writes `state`.
    unsafe { libc::dl_iterate_phdr(Some(first), &mut state as *mut (usize, bool) as *mut c_void) };
    state.1
}

/// The path of the loaded object that holds `addr`.
fn object_of(addr: *const c_void) -> Option<String> {
    // SAFETY: Dl_info is plain data filled by dladdr.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: `info` is a valid out-pointer; dladdr only reads `addr`.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is a NUL-terminated string owned by the loader.
    Some(unsafe { core::ffi::CStr::from_ptr(info.dli_fname) }.to_string_lossy().into_owned())
}
