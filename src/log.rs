//! The event log: one JSON object per line, per `EXDEV` met.
//!
//! Each line is built in memory and written with a single `write(2)` to a
//! file opened with `O_APPEND` (or to fd 2), so lines from concurrent
//! processes never interleave. The file is opened for each line and closed
//! again: no descriptor is kept in the program, and a log that cannot be
//! opened or written (dropped privileges, sandbox, full disk) is skipped
//! silently; it never affects the move, and nothing ever goes to stdout.
//!
//! The line itself is formatted by the engine (`xrename_engine::logline`),
//! so that the supervisor of `xrename --trace` writes the same lines.

use std::ffi::CStr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::config::LogTarget;
use xrename_engine::logline::{self, Line};
use xrename_engine::{self as engine, Op, Report};

/// One handled `EXDEV`.
#[derive(Debug)]
pub struct Event<'a> {
    /// The function called.
    pub op: Op,
    /// Source path as passed.
    pub old: &'a CStr,
    /// Destination path as passed.
    pub new: &'a CStr,
    /// What the engine did.
    pub report: &'a Report,
    /// Time spent in the fallback.
    pub elapsed: Duration,
    /// The outcome.
    pub result: engine::Result<()>,
    /// Settings that were not understood, if any.
    pub note: Option<&'a str>,
}

/// What fd 2 was when the library was loaded: its identity and type.
static STDERR: OnceLock<Option<(u64, u64, FileType)>> = OnceLock::new();

/// Remembers what standard error is; called from the library constructor.
pub fn init() {
    STDERR.get_or_init(stderr_now);
}

fn stderr_now() -> Option<(u64, u64, FileType)> {
    let st = rustix::fs::fstat(rustix::stdio::stderr()).ok()?;
    Some((st.st_dev, st.st_ino, FileType::from_raw_mode(st.st_mode)))
}

/// Writes `event` to `target`, ignoring every error. Never blocks the
/// program and never signals it: a log file is opened non-blocking and
/// written only if it is a regular file (not a FIFO nobody reads, not a
/// device); standard error only if it is still the file it was when the
/// library was loaded (a daemon that closed fd 2 and reused the number for
/// its data gets no log line in it), and a pipe only if it has room, with
/// SIGPIPE kept from the program.
pub fn write(target: &LogTarget, event: &Event<'_>) {
    let e = event;
    let line = Line {
        pid: rustix::process::getpid().as_raw_nonzero().get() as u32,
        program: &program(),
        via: "preload",
        op: e.op,
        old: e.old,
        new: e.new,
        report: e.report,
        elapsed: e.elapsed,
        result: e.result,
        note: e.note,
        warning: None,
    };
    let line = logline::format(&line, SystemTime::now());
    match target {
        LogTarget::Stderr => {
            let Some(Some(then)) = STDERR.get() else { return };
            if stderr_now().as_ref() != Some(then) {
                return;
            }
            match then.2 {
                FileType::Fifo | FileType::Socket => crate::real::write_pipe_quietly(2, line.as_bytes()),
                FileType::RegularFile => crate::real::write_file_quietly(2, line.as_bytes()),
                _ => {
                    let _ = rustix::io::write(rustix::stdio::stderr(), line.as_bytes());
                }
            }
        }
        LogTarget::File(path) | LogTarget::Made(path) => {
            let made = matches!(target, LogTarget::Made(_));
            // Not even opened if it is not a regular file: opening a FIFO to
            // write would wake its reader (an EOF when closed again).
            let st = if made { rustix::fs::lstat(&**path) } else { rustix::fs::stat(&**path) };
            match st {
                Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => return,
                Ok(_) => {}
                Err(Errno::NOENT) if !made => {}
                Err(_) => return,
            }
            let mut flags = OFlags::WRONLY | OFlags::APPEND | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
            flags |= if made { OFlags::NOFOLLOW } else { OFlags::CREATE };
            let Ok(fd) = rustix::fs::open(&**path, flags, Mode::from_raw_mode(0o644)) else {
                return;
            };
            // The summary log is the command's, made by this user: a file
            // someone else put at its name once it was removed is not it.
            let ours = |st: &rustix::fs::Stat| !made || st.st_uid == rustix::process::geteuid().as_raw();
            if rustix::fs::fstat(&fd)
                .is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile && ours(&st))
            {
                crate::real::write_file_quietly(fd.as_raw_fd(), line.as_bytes());
            }
        }
    }
}

fn program() -> String {
    let mut buf = [0u8; 64];
    let n = rustix::fs::open(c"/proc/self/comm", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .and_then(|fd| rustix::io::read(fd.as_fd(), &mut buf[..]))
        .unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()
}
