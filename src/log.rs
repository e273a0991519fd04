//! The event log: one JSON object per line, per `EXDEV` met.
//!
//! Each line is built in memory and written with a single `write(2)` to a
//! file opened with `O_APPEND` (or to fd 2), so lines from concurrent
//! processes never interleave. The file is opened for each line and closed
//! again: no descriptor is kept in the program, and a log that cannot be
//! opened or written (dropped privileges, sandbox, full disk) is skipped
//! silently; it never affects the move, and nothing ever goes to stdout.
//!
//! Fields: `time` (UTC, RFC 3339 with milliseconds), `pid`, `program`
//! (`/proc/self/comm`), `op` (`rename`, `renameat`, `renameat2`), `src` and
//! `dst` (as the program passed them), `type` (`file`, `dir`, `symlink`,
//! `fifo`, `chr`, `blk`, `sock`, or `unknown`), `bytes` copied, `files`
//! created, `ms` spent, `result` (`ok` or the errno's name), and on failure
//! `step`, what xrename was doing; on success, `leftover`: a path that
//! still holds some of the source (entries changed during the move, put
//! back under the source name, or an old source that could not be deleted).

use std::ffi::CStr;
use std::fmt::Write as _;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::config::LogTarget;
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
    let line = format(event, SystemTime::now(), &program());
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
        LogTarget::File(path) => {
            // Not even opened if it is not a regular file: opening a FIFO to
            // write would wake its reader (an EOF when closed again).
            match rustix::fs::stat(&**path) {
                Ok(st) if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile => return,
                Ok(_) | Err(Errno::NOENT) => {}
                Err(_) => return,
            }
            let flags =
                OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
            let Ok(fd) = rustix::fs::open(&**path, flags, Mode::from_raw_mode(0o644)) else {
                return;
            };
            if rustix::fs::fstat(&fd).is_ok_and(|st| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile) {
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

/// Formats one log line, newline included.
pub fn format(e: &Event<'_>, now: SystemTime, program: &str) -> String {
    let mut s = String::with_capacity(256);
    s.push_str("{\"time\":");
    json_str(&mut s, time_rfc3339(now).as_bytes());
    let _ = write!(s, ",\"pid\":{}", rustix::process::getpid().as_raw_nonzero());
    s.push_str(",\"program\":");
    json_str(&mut s, program.as_bytes());
    let _ = write!(s, ",\"op\":\"{}\",\"src\":", e.op.name());
    json_str(&mut s, e.old.to_bytes());
    s.push_str(",\"dst\":");
    json_str(&mut s, e.new.to_bytes());
    let _ = write!(
        s,
        ",\"type\":\"{}\",\"bytes\":{},\"files\":{},\"ms\":{:.3},\"result\":",
        type_name(e.report.kind),
        e.report.bytes,
        e.report.files,
        e.elapsed.as_secs_f64() * 1000.0
    );
    match &e.result {
        Ok(()) => s.push_str("\"ok\""),
        Err(err) => {
            let _ = write!(s, "\"{}\",\"step\":", errno_name(err.errno));
            json_str(&mut s, err.step.as_bytes());
        }
    }
    if let Some(name) = &e.report.leftover {
        s.push_str(",\"leftover\":");
        json_str(&mut s, &leftover_path(e.old.to_bytes(), name.to_bytes()));
    }
    if let Some(note) = e.note {
        s.push_str(",\"config\":");
        json_str(&mut s, note.as_bytes());
    }
    s.push_str("}\n");
    s
}

/// The path of `name`, an entry of the source's directory, as the program
/// would name it: the source path with its last component replaced.
fn leftover_path(old: &[u8], name: &[u8]) -> Vec<u8> {
    let mut end = old.len();
    while end > 1 && old[end - 1] == b'/' {
        end -= 1;
    }
    let dir = match old[..end].iter().rposition(|&b| b == b'/') {
        Some(i) => &old[..=i],
        None => &old[..0],
    };
    [dir, name].concat()
}

fn type_name(kind: Option<FileType>) -> &'static str {
    match kind {
        Some(FileType::RegularFile) => "file",
        Some(FileType::Directory) => "dir",
        Some(FileType::Symlink) => "symlink",
        Some(FileType::Fifo) => "fifo",
        Some(FileType::CharacterDevice) => "chr",
        Some(FileType::BlockDevice) => "blk",
        Some(FileType::Socket) => "sock",
        _ => "unknown",
    }
}

/// A JSON string; bytes that are not UTF-8 become U+FFFD (paths are for reading).
fn json_str(s: &mut String, bytes: &[u8]) {
    s.push('"');
    for c in String::from_utf8_lossy(bytes).chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
}

fn time_rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, d.subsec_millis())
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// The symbolic name of an errno, as `errno(3)` lists it.
pub fn errno_name(e: Errno) -> String {
    const NAMES: &[(Errno, &str)] = &[
        (Errno::PERM, "EPERM"),
        (Errno::NOENT, "ENOENT"),
        (Errno::INTR, "EINTR"),
        (Errno::IO, "EIO"),
        (Errno::BADF, "EBADF"),
        (Errno::AGAIN, "EAGAIN"),
        (Errno::NOMEM, "ENOMEM"),
        (Errno::ACCESS, "EACCES"),
        (Errno::FAULT, "EFAULT"),
        (Errno::BUSY, "EBUSY"),
        (Errno::EXIST, "EEXIST"),
        (Errno::XDEV, "EXDEV"),
        (Errno::NOTDIR, "ENOTDIR"),
        (Errno::ISDIR, "EISDIR"),
        (Errno::INVAL, "EINVAL"),
        (Errno::MFILE, "EMFILE"),
        (Errno::NFILE, "ENFILE"),
        (Errno::FBIG, "EFBIG"),
        (Errno::NOSPC, "ENOSPC"),
        (Errno::ROFS, "EROFS"),
        (Errno::MLINK, "EMLINK"),
        (Errno::NAMETOOLONG, "ENAMETOOLONG"),
        (Errno::NOTEMPTY, "ENOTEMPTY"),
        (Errno::LOOP, "ELOOP"),
        (Errno::NODATA, "ENODATA"),
        (Errno::OPNOTSUPP, "EOPNOTSUPP"),
        (Errno::DQUOT, "EDQUOT"),
        (Errno::STALE, "ESTALE"),
        (Errno::NOSYS, "ENOSYS"),
        (Errno::TXTBSY, "ETXTBSY"),
        (Errno::OVERFLOW, "EOVERFLOW"),
        (Errno::RANGE, "ERANGE"),
    ];
    NAMES.iter().find(|(n, _)| *n == e).map_or_else(|| format!("E{}", e.raw_os_error()), |(_, s)| (*s).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_is_one_json_object_with_every_field() {
        let report = Report { kind: Some(FileType::RegularFile), bytes: 5, files: 1, leftover: None };
        let e = Event {
            op: Op::Renameat,
            old: c"/a/b",
            new: c"c\"d\n",
            report: &report,
            elapsed: Duration::from_micros(1500),
            result: Ok(()),
            note: None,
        };
        let line = format(&e, UNIX_EPOCH + Duration::from_millis(1_764_095_000_123), "py");
        assert!(line.ends_with("}\n") && line.matches('\n').count() == 1);
        assert!(line.starts_with("{\"time\":\"2025-11-25T18:23:20.123Z\",\"pid\":"), "{line}");
        assert!(line.contains(",\"program\":\"py\",\"op\":\"renameat\",\"src\":\"/a/b\",\"dst\":\"c\\\"d\\n\",\"type\":\"file\",\"bytes\":5,\"files\":1,\"ms\":1.500,\"result\":\"ok\"}"), "{line}");
    }

    #[test]
    fn leftover_is_named_as_the_program_names_the_source() {
        let report = Report { leftover: Some(c".xrename-src-1-ab".to_owned()), ..Report::default() };
        let e = Event {
            op: Op::Rename,
            old: c"/data/in/tree/",
            new: c"b",
            report: &report,
            elapsed: Duration::ZERO,
            result: Ok(()),
            note: None,
        };
        let line = format(&e, UNIX_EPOCH, "x");
        assert!(line.contains("\"result\":\"ok\",\"leftover\":\"/data/in/.xrename-src-1-ab\"}"), "{line}");
        assert_eq!(leftover_path(b"tree", b"tree"), b"tree");
        assert_eq!(leftover_path(b"/t", b"t"), b"/t");
    }

    #[test]
    fn failure_names_errno_and_step() {
        let report = Report::default();
        let e = Event {
            op: Op::Rename,
            old: c"a",
            new: c"b",
            report: &report,
            elapsed: Duration::ZERO,
            result: Err(engine::Error::new(Errno::NOSPC, "copy")),
            note: None,
        };
        let line = format(&e, UNIX_EPOCH, "x");
        assert!(line.contains("\"type\":\"unknown\""), "{line}");
        assert!(line.contains("\"result\":\"ENOSPC\",\"step\":\"copy\"}"), "{line}");
    }

    #[test]
    fn non_utf8_and_control_bytes_stay_valid_json() {
        let mut s = String::new();
        json_str(&mut s, b"a\xffb\x01");
        assert_eq!(s, "\"a\u{fffd}b\\u0001\"");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
    }
}
