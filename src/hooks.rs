//! The exported `rename`, `renameat` and `renameat2`: the only place that
//! knows the C ABI.
//!
//! Each hook calls the next definition and returns its answer untouched
//! unless it is `-1` with `errno == EXDEV`. That fast path reads `errno`
//! twice and does nothing else: no allocation, no lock, no environment read,
//! no extra syscall, so it stays async-signal-safe like `rename` itself.
//!
//! Only after `EXDEV` does [`fallback`] run the engine, with pthread
//! cancellation disabled (a half-done move must not be abandoned), a
//! thread-local guard against re-entry (libfaketime's technique), and
//! `catch_unwind` so that no panic crosses into C. Its result becomes a
//! return value and `errno` here and nowhere else.
#![allow(unsafe_code)]

use core::cell::Cell;
use core::ffi::{CStr, c_char, c_int, c_uint};
use std::os::fd::BorrowedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::Instant;

use rustix::io::Errno;

use crate::{config, log, real};
use xrename_engine::{self as engine, Op, Report, Request};

/// `rename(3)`.
///
/// # Safety
/// Same contract as the libc function: `old` and `new` are C strings.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn rename(old: *const c_char, new: *const c_char) -> c_int {
    let saved = errno();
    // SAFETY: forwarded unchanged to the next definition.
    let ret = unsafe { real::rename(old, new) };
    if ret != -1 || errno() != libc::EXDEV {
        return ret;
    }
    // SAFETY: the kernel read both strings before answering EXDEV.
    unsafe { fallback(Op::Rename, libc::AT_FDCWD, old, libc::AT_FDCWD, new, 0, saved) }
}

/// `renameat(2)`.
///
/// # Safety
/// Same contract as the libc function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn renameat(olddirfd: c_int, old: *const c_char, newdirfd: c_int, new: *const c_char) -> c_int {
    let saved = errno();
    // SAFETY: forwarded unchanged to the next definition.
    let ret = unsafe { real::renameat(olddirfd, old, newdirfd, new) };
    if ret != -1 || errno() != libc::EXDEV {
        return ret;
    }
    // SAFETY: the kernel read both strings before answering EXDEV.
    unsafe { fallback(Op::Renameat, olddirfd, old, newdirfd, new, 0, saved) }
}

/// `renameat2(2)`.
///
/// # Safety
/// Same contract as the libc function.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn renameat2(
    olddirfd: c_int,
    old: *const c_char,
    newdirfd: c_int,
    new: *const c_char,
    flags: c_uint,
) -> c_int {
    let saved = errno();
    // SAFETY: forwarded unchanged to the next definition.
    let ret = unsafe { real::renameat2(olddirfd, old, newdirfd, new, flags) };
    if ret != -1 || errno() != libc::EXDEV {
        return ret;
    }
    // SAFETY: the kernel read both strings before answering EXDEV.
    unsafe { fallback(Op::Renameat2, olddirfd, old, newdirfd, new, flags, saved) }
}

/// Runs once when the library is loaded: resolve the real functions and
/// read the configuration, so that neither happens on a later call.
extern "C" fn init() {
    real::resolve_all();
    config::init();
    log::init();
    // A panic inside a move is caught (at the boundary, or by the crew of a
    // tree move for its threads) and becomes EXDEV; it must print nothing
    // on the program's fd 2, which a daemon may use for data. This hook is
    // the library's own (its copy of std runs no code but ours), so it is
    // silent for every thread, the crew's and the background flush's too.
    std::panic::set_hook(Box::new(|_| {}));
}

#[used]
#[unsafe(link_section = ".init_array")]
static INIT: extern "C" fn() = init;

/// The EXDEV path. Returns what the hook returns; sets `errno`.
///
/// # Safety
/// `old` and `new` are valid C strings.
#[cold]
#[inline(never)]
unsafe fn fallback(
    op: Op,
    olddirfd: c_int,
    old: *const c_char,
    newdirfd: c_int,
    new: *const c_char,
    flags: c_uint,
    saved_errno: c_int,
) -> c_int {
    let cfg = config::get();
    if cfg.supervised {
        // Under `xrename --trace` the supervisor answered this call already.
        return -1;
    }
    // Pass-through because a setting was not understood, or observe mode:
    // the kernel's answer, logged with the reason.
    let passed = match (cfg.disabled, cfg.note, cfg.observe) {
        (true, Some(note), _) => Some(note),
        (true, None, _) => return -1, // errno is still the kernel's EXDEV
        (false, _, true) => Some("observe"),
        // fakechroot, fakeroot: the engine's raw syscalls would act on real
        // paths and real owners, not the ones the program sees.
        _ => config::interposer(),
    };
    if let Some(step) = passed {
        // SAFETY: the caller guarantees both are C strings.
        let (old, new) = unsafe { (CStr::from_ptr(old), CStr::from_ptr(new)) };
        let result = Err(engine::Error::new(Errno::XDEV, step));
        let report = Report::default();
        for target in &cfg.logs {
            let event = log::Event { op, old, new, report: &report, elapsed: Default::default(), result, note: None };
            log::write(target, &event);
        }
        set_errno(libc::EXDEV);
        return -1;
    }
    let Some(_busy) = Busy::enter() else {
        return -1; // our own work reached a hook: answer as the kernel did
    };
    let _no_cancel = NoCancel::new();
    // SAFETY: the caller guarantees both are C strings.
    let (old, new) = unsafe { (CStr::from_ptr(old), CStr::from_ptr(new)) };
    let started = Instant::now();
    let mut report = Report::default();
    let result = match (dirfd(olddirfd, old), dirfd(newdirfd, new)) {
        (Some(old_dir), Some(new_dir)) => {
            let req = Request { op, old_dir, old, new_dir, new, flags };
            let run = || {
                if cfg.debug_panic {
                    panic!("XRENAME_DEBUG=panic");
                }
                engine::rename(&req, &cfg.engine, &mut report)
            };
            catch_unwind(AssertUnwindSafe(run)).unwrap_or(Err(engine::Error::new(Errno::XDEV, "internal panic")))
        }
        _ => Err(engine::Error::new(Errno::BADF, "dirfd")),
    };
    for target in &cfg.logs {
        let event = log::Event { op, old, new, report: &report, elapsed: started.elapsed(), result, note: cfg.note };
        log::write(target, &event);
    }
    match result {
        Ok(()) => {
            set_errno(saved_errno);
            0
        }
        Err(e) => {
            set_errno(e.errno.raw_os_error());
            -1
        }
    }
}

/// The descriptor a `*at` call resolves `path` against. For an absolute path
/// the kernel ignores `fd`, and so do we; a negative `fd` other than
/// `AT_FDCWD` with a relative path cannot have reached EXDEV.
fn dirfd(fd: c_int, path: &CStr) -> Option<BorrowedFd<'static>> {
    if fd == libc::AT_FDCWD || path.to_bytes().first() == Some(&b'/') {
        Some(rustix::fs::CWD)
    } else if fd >= 0 {
        // SAFETY: the caller passed `fd` as an open directory descriptor and
        // keeps it open for the duration of its own call, which outlives ours.
        Some(unsafe { BorrowedFd::borrow_raw(fd) })
    } else {
        None
    }
}

fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn set_errno(value: c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value }
}

thread_local! {
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as inside xrename's own work.
struct Busy;

impl Busy {
    fn enter() -> Option<Busy> {
        BUSY.with(|b| (!b.replace(true)).then_some(Busy))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        BUSY.with(|b| b.set(false));
    }
}

const PTHREAD_CANCEL_DISABLE: c_int = 1;

unsafe extern "C" {
    fn pthread_setcancelstate(state: c_int, oldstate: *mut c_int) -> c_int;
}

/// Disables pthread cancellation until dropped, then restores the old state.
struct NoCancel(c_int);

impl NoCancel {
    fn new() -> NoCancel {
        let mut old = 0;
        // SAFETY: `old` is a valid out-pointer.
        unsafe { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &mut old) };
        NoCancel(old)
    }
}

impl Drop for NoCancel {
    fn drop(&mut self) {
        let mut ignored = 0;
        // SAFETY: restores the state saved in `new`.
        unsafe { pthread_setcancelstate(self.0, &mut ignored) };
    }
}
